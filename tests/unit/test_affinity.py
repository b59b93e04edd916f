"""Session affinity for HTTP servers: rendezvous hashing, then a remembered pin per session."""

from __future__ import annotations

import collections

from cove._runtime.affinity import SessionTable, StickySessions, rendezvous_order, rendezvous_score


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def always(_: str) -> bool:
    return True


def test_rendezvous_order_is_deterministic_and_independent_of_input_order() -> None:
    ids = ["ta-1", "ta-2", "ta-3", "ta-4"]
    assert rendezvous_order(b"s", ids) == rendezvous_order(b"s", list(reversed(ids)))
    assert rendezvous_score(b"s", "ta-1") == rendezvous_score(b"s", "ta-1")
    assert sorted(rendezvous_order(b"s", ids)) == sorted(ids)


def test_rendezvous_moves_only_the_sessions_of_a_removed_container() -> None:
    ids = ["ta-a", "ta-b", "ta-c"]
    sessions = [f"user-{n}".encode() for n in range(300)]
    before = {s: rendezvous_order(s, ids)[0] for s in sessions}
    after = {s: rendezvous_order(s, ["ta-a", "ta-c"])[0] for s in sessions}
    for session in sessions:
        if before[session] != "ta-b":
            assert after[session] == before[session]


def test_rendezvous_spreads_sessions_over_containers() -> None:
    ids = ["ta-a", "ta-b", "ta-c"]
    counts = collections.Counter(rendezvous_order(f"user-{n}".encode(), ids)[0] for n in range(3000))
    assert set(counts) == set(ids)
    assert min(counts.values()) > 800  # about 1000 each


def test_a_session_keeps_its_container_when_containers_are_added() -> None:
    table = SessionTable(clock=Clock())
    first = table.choose(b"s", ["ta-a"], always)
    assert first == "ta-a"
    for grown in (["ta-a", "ta-b"], ["ta-a", "ta-b", "ta-c", "ta-d"]):
        assert table.choose(b"s", grown, always) == "ta-a"


def test_a_session_whose_container_left_is_pinned_to_its_rendezvous_choice_and_stays() -> None:
    table = SessionTable(clock=Clock())
    assert table.choose(b"s", ["ta-a"], always) == "ta-a"
    remaining = ["ta-b", "ta-c"]
    moved = table.choose(b"s", remaining, always)
    assert moved == rendezvous_order(b"s", remaining)[0]
    assert table.choose(b"s", ["ta-a", *remaining], always) == moved  # the old one back: no flapping


def test_a_full_container_lends_the_request_without_moving_the_session() -> None:
    table = SessionTable(clock=Clock())
    ids = ["ta-a", "ta-b", "ta-c"]
    home = table.choose(b"s", ids, always)
    assert home is not None
    lent = table.choose(b"s", ids, lambda cid: cid != home)
    assert lent is not None and lent != home
    assert table.choose(b"s", ids, always) == home


def test_no_container_with_room_gives_none() -> None:
    table = SessionTable(clock=Clock())
    assert table.choose(b"s", ["ta-a", "ta-b"], lambda _: False) is None
    assert table.choose(b"t", [], always) is None


def test_pins_expire_after_the_idle_ttl_and_requests_refresh_them() -> None:
    clock = Clock()
    table = SessionTable(clock=clock, idle_ttl_s=10)
    table.choose(b"s", ["ta-a"], always)
    clock.now = 9
    assert table.pinned(b"s") == "ta-a"
    table.choose(b"s", ["ta-a"], always)  # a request refreshes the pin
    clock.now = 18
    assert table.pinned(b"s") == "ta-a"
    clock.now = 28
    assert table.pinned(b"s") is None
    assert len(table) == 0


def test_the_table_is_bounded_dropping_the_least_recently_used_pin() -> None:
    clock = Clock()
    table = SessionTable(clock=clock, max_sessions=3)
    for name in (b"a", b"b", b"c"):
        table.choose(name, ["ta-1"], always)
    table.choose(b"a", ["ta-1"], always)  # "a" used again: "b" is now the oldest
    table.choose(b"d", ["ta-1"], always)
    assert len(table) == 3
    assert table.pinned(b"b") is None
    assert all(table.pinned(s) == "ta-1" for s in (b"a", b"c", b"d"))


def test_expired_pins_are_dropped_as_new_sessions_arrive() -> None:
    clock = Clock()
    table = SessionTable(clock=clock, idle_ttl_s=5)
    for n in range(100):
        table.choose(f"old-{n}".encode(), ["ta-1"], always)
    clock.now = 6
    table.choose(b"new", ["ta-1"], always)
    assert len(table) == 1


def test_a_sticky_session_lives_while_requests_are_in_flight_and_ends_after_idle_timeout() -> None:
    sessions = StickySessions()
    sessions.start("ss-1", "ta-a", idle_timeout_s=10, now=0)
    sessions.begin("ss-1")
    assert sessions.get("ss-1", now=100) is not None  # a request in flight: never idle
    sessions.end("ss-1", now=100)
    assert sessions.get("ss-1", now=109) is not None
    assert sessions.count("ta-a", now=109) == 1
    assert sessions.get("ss-1", now=110) is None
    assert len(sessions) == 0


def test_sticky_sessions_are_terminated_and_expired_and_counted_per_container() -> None:
    sessions = StickySessions()
    sessions.start("ss-1", "ta-a", idle_timeout_s=5, now=0)
    sessions.start("ss-2", "ta-a", idle_timeout_s=50, now=0)
    sessions.start("ss-3", "ta-b", idle_timeout_s=50, now=0)
    assert (sessions.count("ta-a", now=1), sessions.count("ta-b", now=1)) == (2, 1)
    assert sessions.terminate("ss-3") and not sessions.terminate("ss-3")
    sessions.expire(now=6)
    assert len(sessions) == 1 and sessions.count("ta-a", now=6) == 1
    assert sessions.get("ss-2", now=6) is not None
