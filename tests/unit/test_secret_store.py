"""Named secrets: files only their owner can read, resolved in order, with errors that name the fix."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cove._control.secrets import SecretStore
from cove._spec import SecretRef
from cove.exception import AlreadyExistsError, InvalidError, NotFoundError


def test_secret_files_are_private(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    store.create("tok", {"AUTH_TOKEN": "x"})
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "secrets" / "tok.json").stat().st_mode) == 0o600


def test_later_secrets_override_earlier_keys(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    store.create("a", {"K": "from-a", "ONLY_A": "1"})
    store.create("b", {"K": "from-b"})
    env = store.resolve([SecretRef(name="a"), SecretRef(name="b"), SecretRef(values=(("EXTRA", "e"),))])
    assert env == {"K": "from-b", "ONLY_A": "1", "EXTRA": "e"}


def test_missing_secret_and_key_name_the_fix(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    with pytest.raises(NotFoundError, match="cove secret create nope KEY=VALUE"):
        store.resolve([SecretRef(name="nope")])
    store.create("tok", {"A": "1"})
    with pytest.raises(NotFoundError, match="missing required key"):
        store.resolve([SecretRef(name="tok", required_keys=("A", "B"))])


def test_create_refuses_overwrite_without_force_and_bad_keys(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    store.create("tok", {"A": "1"})
    with pytest.raises(AlreadyExistsError, match="--force"):
        store.create("tok", {"A": "2"})
    store.create("tok", {"A": "2"}, force=True)
    assert store.get("tok") == {"A": "2"}
    with pytest.raises(InvalidError, match="environment variable names"):
        store.create("bad", {"1X": "v"})
    with pytest.raises(InvalidError, match="Invalid secret name"):
        store.create("../escape", {"A": "v"})


def test_list_shows_names_and_keys_not_values(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    store.create("tok", {"AUTH_TOKEN": "hunter2"})
    (info,) = store.list()
    assert info.name == "tok"
    assert info.keys == ("AUTH_TOKEN",)
    assert "hunter2" not in repr(info)
