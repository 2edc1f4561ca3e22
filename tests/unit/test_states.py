import itertools

import pytest

from shared.states import ALLOWED, TERMINAL, JobStatus, can_transition


def test_happy_path_is_allowed():
    path = [JobStatus.QUEUED, JobStatus.PROVISIONING, JobStatus.RUNNING, JobStatus.COMPLETED]
    assert all(can_transition(a, b) for a, b in itertools.pairwise(path))


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_have_no_way_out(terminal):
    assert not ALLOWED[terminal]
    assert all(not can_transition(terminal, s) for s in JobStatus)


def test_preemption_goes_back_to_the_queue():
    assert can_transition(JobStatus.RUNNING, JobStatus.PREEMPTED)
    assert can_transition(JobStatus.PREEMPTED, JobStatus.QUEUED)
    assert not can_transition(JobStatus.RUNNING, JobStatus.QUEUED)


def test_no_going_backwards():
    assert not can_transition(JobStatus.RUNNING, JobStatus.PROVISIONING)
    assert not can_transition(JobStatus.COMPLETED, JobStatus.RUNNING)
    assert not can_transition(JobStatus.QUEUED, JobStatus.COMPLETED)


def test_every_state_has_a_rule():
    assert set(ALLOWED) == set(JobStatus)


def test_every_status_has_one_of_the_documents_five():
    from shared.states import DOCUMENTED_STATUS

    assert set(DOCUMENTED_STATUS) == set(JobStatus)
    assert set(DOCUMENTED_STATUS.values()) == {"queued", "creating", "running", "completed", "failed"}
    assert all(DOCUMENTED_STATUS[s] in ("completed", "failed") for s in TERMINAL)
