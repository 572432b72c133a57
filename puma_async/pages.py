"""Ordinary pages for NumPy's arrays: no transparent-huge-page advice.

NumPy advises the kernel to back every array of 4 MiB or more with transparent huge pages
(``madvise(MADV_HUGEPAGE)``). Where the host's policy is ``defrag = madvise`` (this project's
machine class), the kernel then *compacts memory synchronously* on the first touch of such an
array once free memory is fragmented (a large page cache is enough): measured here, the first
write of a fresh 1 GiB array took 13.2 s with the advice and 0.4 s without it. In a party that
is a stall of the event loop (heartbeats stop; peers may declare it dead), and it made the
local run's set-up ten times longer (`python -m puma_async.local`: 61 s with the advice, set-up
44.6 s; 17 s without it, set-up 4.2 s). Per-token times do not change.

The advice is switched off when :mod:`puma_async` is imported, unless the user chose with
NumPy's own environment variable ``NUMPY_MADVISE_HUGEPAGE`` (then NumPy's choice stands).
"""

from __future__ import annotations

import os

ENVIRONMENT_VARIABLE = "NUMPY_MADVISE_HUGEPAGE"


def keep_ordinary_pages() -> None:
    """Turn NumPy's huge-page advice off for arrays allocated from now on, unless
    ``NUMPY_MADVISE_HUGEPAGE`` is set."""
    if ENVIRONMENT_VARIABLE in os.environ:
        return
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.26
        from numpy.core import multiarray  # type: ignore[no-redef]
    multiarray._set_madvise_hugepage(False)
