"""A pytest plugin (`-p tests.integration.image_cache` in pyproject.toml): one image cache per session.

Every integration test gets a fresh COVE_HOME, and every app runs on a built image. Without a shared
cache each test would rebuild the default image, and the one apt test would debootstrap Debian into
its own COVE_HOME. This points COVE_IMAGE_CACHE (inherited by every server the tests start) at one
directory for the whole session, removed at the end. A COVE_IMAGE_CACHE already set is kept as is
(and kept afterwards), so a developer can reuse a cache across runs.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

_OWNED: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("COVE_IMAGE_CACHE"):
        return
    path = tempfile.mkdtemp(prefix="cove-images-", dir=os.environ.get("TMPDIR") or "/var/tmp")
    os.environ["COVE_IMAGE_CACHE"] = path
    _OWNED.append(path)


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _OWNED:
        # rm is much faster than shutil.rmtree on root filesystems' tens of thousands of files.
        subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)
        if os.environ.get("COVE_IMAGE_CACHE") == path:
            del os.environ["COVE_IMAGE_CACHE"]
