"""The job state machine."""

from __future__ import annotations

import pytest

from service.state.states import TRANSITIONS, JobStatus, allowed_sources, can_transition

S = JobStatus


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.PENDING, S.WAITING_FOR_DATA),
        (S.WAITING_FOR_DATA, S.TRAINING),
        (S.TRAINING, S.GROWING),
        (S.GROWING, S.TRAINING),
        (S.TRAINING, S.PAUSED),
        (S.PAUSED, S.TRAINING),
        (S.TRAINING, S.WAITING_FOR_DATA),
        (S.TRAINING, S.PENDING),
        (S.GROWING, S.FAILED),
        (S.PAUSED, S.STOPPED),
        (S.TRAINING, S.CONVERGED),
        (S.CONVERGED, S.TRAINING),
        (S.CONVERGED, S.PAUSED),
        (S.PENDING, S.CONVERGED),
    ],
)
def test_allowed(current: JobStatus, new: JobStatus) -> None:
    assert can_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.STOPPED, S.TRAINING),
        (S.FAILED, S.PENDING),
        (S.PENDING, S.GROWING),
        (S.PAUSED, S.GROWING),
        (S.GROWING, S.PAUSED),
        (S.WAITING_FOR_DATA, S.GROWING),
        (S.CONVERGED, S.GROWING),  # a grow command wakes it to train first
        (S.WAITING_FOR_DATA, S.CONVERGED),
        (S.PAUSED, S.CONVERGED),
    ],
)
def test_refused(current: JobStatus, new: JobStatus) -> None:
    assert not can_transition(current, new)


def test_terminal_states_lead_nowhere_and_every_live_state_can_end() -> None:
    for status in JobStatus:
        if status.terminal:
            assert not TRANSITIONS[status]
        else:
            assert {S.STOPPED, S.FAILED} <= TRANSITIONS[status]


def test_allowed_sources_include_the_state_itself() -> None:
    assert set(allowed_sources(S.GROWING)) == {S.GROWING, S.TRAINING}
