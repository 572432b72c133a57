"""Transports: how frames move between roles (in-memory, TCP with mutual TLS, recording)."""
