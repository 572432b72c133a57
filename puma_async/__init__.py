"""puma-async: three-party secure inference of LLaMA-family models (after PUMA)."""

from .pages import keep_ordinary_pages

keep_ordinary_pages()
