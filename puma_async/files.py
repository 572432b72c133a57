"""Files that hold secrets: created private (0600 files, 0700 folders), never overwritten silently.

Traces (their header holds a role's key entropy), record folders, result files (logits, the
generated text) and private keys go through these two functions. An existing target is refused
with :class:`FileExistsError` naming it unless the caller passes ``force=True`` (the CLIs'
``--force``); a forced file is truncated and its mode reset to 0600 before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o600
DIR_MODE = 0o700


def create_private_file(path: str | os.PathLike[str], *, force: bool = False) -> BinaryIO:
    """Open ``path`` for binary writing, readable by its owner only.

    Without ``force`` the file must not exist (``O_EXCL``: no race with another writer);
    with it, an existing file is truncated and made 0600 first.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, FILE_MODE)
    except FileExistsError:
        raise FileExistsError(f"{os.fspath(path)} exists (use --force to overwrite it)") from None
    try:
        os.fchmod(fd, FILE_MODE)  # an existing file keeps its old mode through O_TRUNC
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def write_private(path: str | os.PathLike[str], data: bytes, *, force: bool = False) -> None:
    """Write ``data`` to a new private file (see :func:`create_private_file`)."""
    with create_private_file(path, force=force) as file:
        file.write(data)


def create_private_dir(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """A folder for secret files, mode 0700 (parents are created with the default mode).

    An existing empty folder is taken over (made 0700); a non-empty one only with ``force``
    (its files are then overwritten one by one by their writers, which must pass ``force``).
    """
    folder = Path(path)
    try:
        folder.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        if not folder.is_dir():
            raise FileExistsError(f"{folder} exists and is not a folder") from None
        if any(folder.iterdir()) and not force:
            raise FileExistsError(
                f"{folder} exists and is not empty (use --force to overwrite its files)"
            ) from None
    os.chmod(folder, DIR_MODE)  # mkdir's mode is masked by the umask
    return folder


__all__ = ["DIR_MODE", "FILE_MODE", "create_private_dir", "create_private_file", "write_private"]
