"""Dict, Queue and Volume share Modal's constructors (`from_name`, `ephemeral`, `delete`), which are
inert until used and check names before any request."""

from __future__ import annotations

import inspect

import pytest

import cove
from cove._object import Ephemeral, ServerObject
from cove.exception import InvalidError

KINDS = [(cove.Dict, "Dict"), (cove.Queue, "Queue"), (cove.Volume, "Volume")]


@pytest.mark.parametrize(("kind", "title"), KINDS)
def test_constructors_keep_modals_signatures(kind: type[ServerObject], title: str) -> None:
    version = ["version"] if kind is cove.Volume else []
    assert list(inspect.signature(kind.from_name).parameters) == [
        "name", "environment_name", "create_if_missing", *version, "client"
    ]  # fmt: skip
    assert list(inspect.signature(kind.ephemeral).parameters) == ["client", "environment_name", *version]
    assert list(inspect.signature(kind.delete).parameters) == [
        "name", "allow_missing", "environment_name", "client"
    ]  # fmt: skip


@pytest.mark.parametrize(("kind", "title"), KINDS)
def test_from_name_is_a_lazy_object_of_its_own_kind(kind: type[ServerObject], title: str) -> None:
    """No server runs here: `from_name` and `ephemeral` only record what to look up."""
    obj = kind.from_name("jobs-1", create_if_missing=True)
    assert type(obj) is kind
    assert obj.name == "jobs-1"
    assert repr(obj) == f"cove.{title}.from_name('jobs-1')"
    eph = kind.ephemeral()
    assert isinstance(eph, Ephemeral) and eph._cls is kind


@pytest.mark.parametrize(("kind", "title"), KINDS)
def test_bad_names_are_refused_naming_the_kind_before_any_request(
    kind: type[ServerObject], title: str
) -> None:
    with pytest.raises(InvalidError, match=rf"^Invalid {title} name '\.\./x'"):
        kind.from_name("../x")
    with pytest.raises(InvalidError, match=rf"^Invalid {title} name ''"):
        kind.delete("")
