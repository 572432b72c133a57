"""Private files: 0600/0700 whatever the umask, and no silent overwrite."""

from __future__ import annotations

import os
import stat

import pytest

from puma_async.files import create_private_dir, create_private_file, write_private


def _mode(path: os.PathLike[str] | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def permissive_umask():
    old = os.umask(0o000)  # the worst case: nothing masked
    yield
    os.umask(old)


def test_new_file_is_private(tmp_path):
    target = tmp_path / "secret.bin"
    write_private(target, b"abc")
    assert target.read_bytes() == b"abc"
    assert _mode(target) == 0o600


def test_existing_file_is_refused_without_force(tmp_path):
    target = tmp_path / "secret.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="--force"):
        write_private(target, b"new")
    assert target.read_bytes() == b"old"


def test_force_truncates_and_resets_the_mode(tmp_path):
    target = tmp_path / "secret.bin"
    target.write_bytes(b"a much longer old content")
    os.chmod(target, 0o644)
    with create_private_file(target, force=True) as file:
        assert _mode(target) == 0o600  # private before any byte is written
        file.write(b"new")
    assert target.read_bytes() == b"new"


def test_new_folder_is_private(tmp_path):
    folder = create_private_dir(tmp_path / "a" / "record")
    assert folder.is_dir()
    assert _mode(folder) == 0o700


def test_empty_existing_folder_is_taken_over(tmp_path):
    folder = tmp_path / "record"
    folder.mkdir(mode=0o755)
    create_private_dir(folder)
    assert _mode(folder) == 0o700


def test_non_empty_folder_needs_force(tmp_path):
    folder = tmp_path / "record"
    folder.mkdir()
    (folder / "P0.trace").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not empty"):
        create_private_dir(folder)
    assert create_private_dir(folder, force=True) == folder
    assert _mode(folder) == 0o700


def test_a_file_in_the_way_of_a_folder(tmp_path):
    (tmp_path / "record").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not a folder"):
        create_private_dir(tmp_path / "record", force=True)
