"""Volume file operations never leave the Volume's directory: `..` is refused and symlinks (which a
container may plant) are refused rather than followed, for every operation."""

from __future__ import annotations

from pathlib import Path

import pytest

from cove import exception
from cove._control import volumes as vol


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "volume"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    (root / "dir").mkdir()
    (root / "dir" / "file.txt").write_text("inside")
    (root / "to-outside").symlink_to(outside)
    (root / "to-secret").symlink_to(outside / "secret")
    (root / "dir" / "up").symlink_to("../../outside")
    return root, outside


def write(root: Path, path: str, data: bytes, *, force: bool = False) -> None:
    upload = vol.Upload(root, path, force=force)
    upload.write(data)
    upload.commit()


def read(root: Path, path: str) -> bytes:
    import os

    fd = vol.open_file(root, path)
    try:
        return b"".join(iter(lambda: vol.read_chunk(fd), b""))
    finally:
        os.close(fd)


@pytest.mark.parametrize("path", ["..", "../outside/secret", "dir/../../outside", "/a/../../b"])
def test_dot_dot_is_refused(path: str) -> None:
    with pytest.raises(exception.InvalidError, match=r"'\.\.'"):
        vol.split(path)


def test_paths_are_relative_to_the_root_whatever_their_slashes() -> None:
    assert vol.split("/a//b/./c/") == ["a", "b", "c"]
    assert vol.split("/") == vol.split("") == []


@pytest.mark.parametrize(
    "operation",
    [
        lambda root: read(root, "to-secret"),
        lambda root: read(root, "to-outside/secret"),
        lambda root: read(root, "dir/up/secret"),
        lambda root: vol.listdir(root, "to-outside/x"),
        lambda root: write(root, "to-outside/planted", b"x"),
        lambda root: write(root, "dir/up/planted", b"x", force=True),
        lambda root: vol.remove(root, "to-outside/secret", recursive=False),
        lambda root: vol.copy(root, ["to-secret"], "copy", recursive=False),
        lambda root: vol.copy(root, ["dir/file.txt"], "to-outside/planted", recursive=False),
    ],
)
def test_symlinks_are_refused_not_followed(layout: tuple[Path, Path], operation: object) -> None:
    root, outside = layout
    with pytest.raises(exception.InvalidError, match="symlink"):
        operation(root)  # type: ignore[operator]
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "host secret"


def test_listing_shows_links_as_links_and_removing_one_keeps_its_target(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    entries = {e.path: e.type for e in vol.listdir(root, "/", recursive=True)}
    assert entries == {
        "dir": "directory",
        "dir/file.txt": "file",
        "dir/up": "symlink",
        "to-outside": "symlink",
        "to-secret": "symlink",
    }
    vol.remove(root, "to-outside", recursive=True)
    assert (outside / "secret").exists() and not (root / "to-outside").exists()


def test_uploads_are_atomic_and_refuse_overwrites_without_force(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    write(root, "new/deep/file.bin", b"one")
    assert read(root, "/new/deep/file.bin") == b"one"
    with pytest.raises(exception.AlreadyExistsError, match="force=True"):
        vol.Upload(root, "new/deep/file.bin", force=False)
    upload = vol.Upload(root, "new/deep/file.bin", force=True)
    upload.write(b"two")
    assert read(root, "new/deep/file.bin") == b"one"  # not visible before commit
    upload.abort()
    assert read(root, "new/deep/file.bin") == b"one"
    assert [p.name for p in (root / "new" / "deep").iterdir()] == ["file.bin"]  # no temp file left
    write(root, "to-secret", b"replaces the link", force=True)
    assert (root / "to-secret").is_file() and not (root / "to-secret").is_symlink()


def test_copy_files_and_directories(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    with pytest.raises(exception.InvalidError, match="recursive=True"):
        vol.copy(root, ["dir"], "dir2", recursive=False)
    vol.copy(root, ["dir"], "dir2", recursive=True)
    assert read(root, "dir2/file.txt") == b"inside"
    assert not (root / "dir2" / "up").exists()  # links inside a copied directory are skipped
    (root / "into").mkdir()
    vol.copy(root, ["dir/file.txt", "dir2/file.txt"], "into", recursive=False)
    assert sorted(p.name for p in (root / "into").iterdir()) == ["file.txt"]
