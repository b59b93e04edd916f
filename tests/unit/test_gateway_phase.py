"""An exchange's phases only move forward, along the transitions `phase.py` draws, and all end in DONE."""

from __future__ import annotations

import pytest

from cove._gateway.phase import HEAD_SENT, MOVED_ON, Phase, PhaseError, advance, allowed

P = Phase
#: Each phase's successors, written out again so that a change to the table is a deliberate one.
EXPECTED = {
    P.ARRIVED: {P.ACQUIRING, P.POLLING, P.ANSWERED, P.DONE},
    P.ACQUIRING: {P.FORWARDED, P.ANSWERED, P.DONE},
    P.FORWARDED: {P.STREAMING, P.RELAYING, P.DETACHED, P.ANSWERED, P.DONE},
    P.POLLING: {P.ANSWERED, P.DONE},
    P.STREAMING: {P.ANSWERED, P.DONE},
    P.RELAYING: {P.DONE},
    P.DETACHED: {P.COLLECTING, P.DONE},
    P.COLLECTING: {P.DONE},
    P.ANSWERED: {P.DONE},
    P.DONE: set(),
}


@pytest.mark.parametrize("old", list(Phase))
@pytest.mark.parametrize("new", list(Phase))
def test_a_transition_is_allowed_exactly_when_the_table_draws_it(old: Phase, new: Phase) -> None:
    assert allowed(old, new) == (new in EXPECTED[old])
    if new in EXPECTED[old]:
        assert advance(old, new) is new
    else:
        with pytest.raises(PhaseError, match=f"from {old.name} to {new.name}"):
            advance(old, new)


def test_no_phase_comes_back_and_every_phase_but_done_can_end_at_once() -> None:
    order = list(Phase)
    for old, successors in EXPECTED.items():
        assert all(order.index(new) > order.index(old) for new in successors), old
        assert old is P.DONE or P.DONE in successors


def test_every_phase_is_reachable_from_arrived() -> None:
    seen, todo = {P.ARRIVED}, [P.ARRIVED]
    while todo:
        for new in EXPECTED[todo.pop()]:
            if new not in seen:
                seen.add(new)
                todo.append(new)
    assert seen == set(Phase)


def test_head_sent_and_moved_on_name_the_phases_they_say() -> None:
    assert {P.STREAMING, P.RELAYING} == HEAD_SENT
    assert {P.DETACHED, P.COLLECTING, P.DONE} == MOVED_ON
