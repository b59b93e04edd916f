"""Uploaded source bundles, stored once per content hash and unpacked next to it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from cove._bundle import bundle_id, extract_bundle
from cove._control.records import Source
from cove._control.storage import StorageError, writing
from cove.exception import InvalidError, NotFoundError


class BundleStore:
    """`COVE_HOME/bundles/<sha256>/` holds the unpacked bundle; versions with equal sources share it."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def save(self, data: bytes) -> str:
        digest = bundle_id(data)
        target = self._dir / digest
        if target.is_dir():
            return digest
        with writing(self._dir):
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self._dir))
        try:
            with writing(self._dir):
                extract_bundle(data, staging)
        except StorageError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise InvalidError(f"The uploaded source bundle is not a valid tar.gz: {exc}") from exc
        try:
            os.rename(staging, target)  # atomic: a bundle directory is complete or absent
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another upload of the same bytes won
        return digest

    def root(self, digest: str) -> Path:
        """The directory bundle `digest` is unpacked in (the root of its manifest's local paths)."""
        if not digest.isalnum():
            raise InvalidError(f"Invalid bundle id {digest!r}.")
        root = self._dir / digest
        if not (root / "src").is_dir():
            raise NotFoundError(f"Bundle {digest} was not uploaded. Upload it first (POST /v1/bundles).")
        return root

    def root_of(self, source_dir: str) -> Path | None:
        """The bundle whose `src/` is `source_dir`, or None: a `cove serve` version runs from the
        user's own files, and a deployed one from a bundle of this store (`source`)."""
        src = Path(source_dir)
        if src.name == "src" and src.parent.parent == self._dir and src.parent.name.isalnum():
            return src.parent
        return None

    def source(self, digest: str, module_path: str) -> Source:
        """Where a version built from bundle `digest` runs: its `src/` dir and the app file in it."""
        src = self.root(digest) / "src"
        module_file = (src / module_path).resolve()
        if src.resolve() not in module_file.parents or not module_file.is_file():
            raise InvalidError(f"{module_path!r} is not a file of bundle {digest}.")
        return Source(module_file=str(module_file), source_dir=str(src))
