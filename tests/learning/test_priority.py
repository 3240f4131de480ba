import pytest

from learning.priority import PriorityInputs, task_priority, weights


def _p(u=0.0, client=0, age=0.0, outstanding=2, required=2):
    return task_priority(PriorityInputs(u, client, age, outstanding, required))


def test_more_uncertain_work_comes_first_at_equal_age():
    assert _p(u=0.9) > _p(u=0.2)


def test_old_confident_work_eventually_outranks_fresh_uncertain_work():
    horizon = weights()["horizon_days"]
    assert _p(u=0.0, age=horizon) > _p(u=1.0, age=0.0)
    assert _p(u=0.0, age=horizon / 10) < _p(u=1.0, age=0.0)  # but not at once


def test_client_priority_outranks_any_model_score_and_started_tasks_finish_first():
    assert _p(u=0.0, client=1) > _p(u=1.0, client=0)
    assert _p(outstanding=1) > _p(outstanding=2)


def test_weights_that_would_starve_confident_work_are_refused():
    with pytest.raises(ValueError, match="age weight"):
        weights({"age": 0.5, "uncertainty": 1.0})
    with pytest.raises(ValueError, match="unknown"):
        weights({"urgency": 1})
