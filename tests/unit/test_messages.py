"""Control messages between the server, workers, zygotes and Ray actors survive their JSON form, and
a message this process does not know is refused with an error that names it (issue 14, item 4)."""

from __future__ import annotations

import json

import pytest

from cove._messages import (
    BecomeZygote,
    Fork,
    Go,
    Isolation,
    Message,
    Reap,
    Start,
    UnknownMessage,
    decode,
    encode,
)

START = Start(
    container_id="ta-1",
    function={"tag": "square", "image": {"steps": []}},
    module_file="/root/app.py",
    source_dir="/root",
    env={"TOKEN": "s3cret"},
    workdir="/srv",
    listen_fd=7,
)
MESSAGES: list[Message] = [
    START,
    Start("ta-2", {"tag": "f"}, "app.py", "", socket="/run/cove/ta-2.sock"),
    BecomeZygote(),
    Fork("ta-3", "container", START, plan=Isolation(("/root", "/tmp"), True), hold=True, sent=12.5),
    Fork("fz-1", "function", START),
    Reap(42),
    Go(1 << 30),
    Go(),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_a_json_line(message: Message) -> None:
    assert decode(json.loads(json.dumps(encode(message)))) == message


def test_the_wire_format_names_the_op_first() -> None:
    assert encode(Reap(3)) == {"op": "reap", "pid": 3}
    assert next(iter(encode(START))) == "op"


def test_the_descriptor_count_a_channel_adds_is_not_part_of_the_message() -> None:
    assert decode({"op": "go", "data_bytes": None, "fds": 0}) == Go()


def test_secrets_of_a_start_message_stay_out_of_its_repr() -> None:
    assert "s3cret" not in repr(START)
    assert "s3cret" not in repr(Fork("ta-3", "container", START))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"op": "explode"}, "unknown control message op 'explode'; known: fork, go, reap, start, zygote"),
        ({"pid": 3}, "unknown control message op None"),
        ({"op": "reap", "pid": 3, "signal": 9}, "control message 'reap' has unexpected fields ['signal']"),
        ({"op": "reap"}, "control message 'reap' is malformed"),
        ({"op": "fork", "id": "x", "role": "container", "start": {"op": "go"}}, "a fork's start must be"),
        (
            {"op": "fork", "id": "x", "role": "container", "start": encode(START), "plan": {"network": 1}},
            "control message 'fork' has a malformed plan",
        ),
    ],
)
def test_a_message_it_does_not_know_is_refused_naming_what_is_wrong(
    data: dict[str, object], says: str
) -> None:
    with pytest.raises(UnknownMessage) as refused:
        decode(data)
    assert str(refused.value).startswith(says)
    assert isinstance(refused.value, ValueError)
