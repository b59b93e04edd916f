"""The owner/worker channel's framing: messages arrive whole and in order however the bytes are cut."""

from __future__ import annotations

import asyncio

from cove._gateway.channel import MAX_MESSAGE_BYTES, Channel, Message, encode
from cove._gateway.longpoll import CallResult

MESSAGES: list[Message] = [
    ("acquire", 1, "alice--shop-square.localhost", None),
    ("lease", 1, 7, "/tmp/cove/c-1.sock"),
    ("call_finish", "fc-" + "0" * 32, CallResult(201, b"Created", b"X-A: 1\r\n", b"x" * 70_000)),
    ("release", 7, True, False),
]


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def _receiver() -> tuple[Channel, list[Message], _Transport]:
    received: list[Message] = []
    channel = Channel(received.append, lambda: None)
    transport = _Transport()
    channel.connection_made(transport)
    return channel, received, transport


def test_messages_cut_at_every_size_arrive_whole_and_in_order() -> None:
    data = b"".join(encode(message) for message in MESSAGES)
    for size in (1, 3, 4, 5, 17, 4096, len(data)):
        channel, received, _ = _receiver()
        for start in range(0, len(data), size):
            channel.data_received(data[start : start + size])
        assert received == MESSAGES, size


def test_a_length_past_the_limit_closes_the_channel_without_reading_on() -> None:
    channel, received, transport = _receiver()
    channel.data_received((MAX_MESSAGE_BYTES + 1).to_bytes(4, "big") + b"junk")
    assert transport.aborted
    assert received == []


def test_a_failing_handler_does_not_stop_the_messages_after_it() -> None:
    seen: list[Message] = []

    def handle(message: Message) -> None:
        if message[0] == "lease":
            raise RuntimeError("a handler bug")
        seen.append(message)

    channel = Channel(handle, lambda: None)
    channel.connection_made(_Transport())
    channel.data_received(b"".join(encode(message) for message in MESSAGES))
    assert [m[0] for m in seen] == ["acquire", "call_finish", "release"]


def test_the_other_end_going_away_is_reported_once() -> None:
    lost: list[None] = []
    channel = Channel(lambda message: None, lambda: lost.append(None))
    channel.connection_made(_Transport())
    channel.connection_lost(None)
    channel.connection_lost(None)
    assert lost == [None]
    assert not channel.open
