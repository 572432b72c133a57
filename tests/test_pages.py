"""puma_async switches NumPy's huge-page advice off (see :mod:`puma_async.pages`), unless the
user chose with NUMPY_MADVISE_HUGEPAGE."""

from __future__ import annotations

import os

import pytest

import puma_async  # noqa: F401  (the import under test)
from puma_async.pages import ENVIRONMENT_VARIABLE, keep_ordinary_pages

try:
    from numpy._core import multiarray
except ImportError:  # NumPy 1.26
    from numpy.core import multiarray  # type: ignore[no-redef]


def _swap_advice(on: bool) -> bool:
    """Set NumPy's advice; return what it was."""
    return bool(multiarray._set_madvise_hugepage(on))


@pytest.mark.skipif(ENVIRONMENT_VARIABLE in os.environ, reason="the user chose")
def test_importing_puma_async_turned_the_advice_off() -> None:
    was = _swap_advice(False)
    try:
        assert was is False  # as the package's import left it
    finally:
        _swap_advice(was)


@pytest.mark.parametrize("chosen", ["0", "1"])
def test_the_users_choice_stands(monkeypatch: pytest.MonkeyPatch, chosen: str) -> None:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, chosen)
    was = _swap_advice(True)
    try:
        keep_ordinary_pages()
        assert _swap_advice(True) is True  # left as NumPy had it
    finally:
        _swap_advice(was)


def test_without_a_choice_the_advice_goes_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    was = _swap_advice(True)
    try:
        keep_ordinary_pages()
        assert _swap_advice(False) is False
    finally:
        _swap_advice(was)
