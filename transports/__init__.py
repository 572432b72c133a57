"""Transports: how frames move between roles (in-memory, threads, TCP with mutual TLS)."""
