"""puma-async: three-party secure inference of LLaMA-family models (after PUMA)."""
