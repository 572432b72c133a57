"""Helpers behind the fixtures of ``tests/conftest.py``; tests use the fixtures, not these
modules. ``sealed.py`` and ``tcp_ring.py`` are scripts the system tests run as processes."""
