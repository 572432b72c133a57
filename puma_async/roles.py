"""Role ids: the three computing parties and the two input/output roles."""

from __future__ import annotations

P0, P1, P2 = 0, 1, 2
MODEL_OWNER = 3
CLIENT = 4

PARTIES: tuple[int, ...] = (P0, P1, P2)
ALL_ROLES: tuple[int, ...] = (P0, P1, P2, MODEL_OWNER, CLIENT)

_NAMES = {P0: "P0", P1: "P1", P2: "P2", MODEL_OWNER: "model-owner", CLIENT: "client"}


def role_name(role: int) -> str:
    """Human-readable name of a role id ('P0', 'client', ...)."""
    return _NAMES.get(role, f"role{role}")


def next_party(party: int) -> int:
    """P_{i+1}: the party that also holds share i+1 of P_i's pair."""
    return (party + 1) % 3


def prev_party(party: int) -> int:
    """P_{i-1}."""
    return (party + 2) % 3
