"""The MPC protocols: ring and fixed point, sharing, arithmetic, boolean, non-linear, layers."""
