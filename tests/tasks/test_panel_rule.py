"""The panel policy's pure rule, and the benchmark that runs it (no database)."""

import numpy as np

from bench.panel_policy import simulate, synthetic_pool
from core.panel_rule import ANNOTATOR, RADIOLOGIST, panel_for

ON = {"enabled": True, "uncertainty_threshold": 0.5, "action": "extra_read"}


def test_the_rule_is_off_without_an_enabled_policy():
    assert panel_for(1.0, None, 2) == (2, ANNOTATOR)
    assert panel_for(1.0, {**ON, "enabled": False}, 2) == (2, ANNOTATOR)


def test_unsure_tasks_get_one_more_read_capped_at_three_and_sure_ones_keep_k():
    assert panel_for(0.5, ON, 2) == (3, ANNOTATOR)
    assert panel_for(0.9, ON, 3) == (3, ANNOTATOR)
    assert panel_for(0.49, ON, 2) == (2, ANNOTATOR)
    assert panel_for(0.7, {**ON, "action": "radiologist_first_read"}, 2) == (2, RADIOLOGIST)


def test_the_simulation_is_reproducible_and_reports_its_weights():
    pool = synthetic_pool(500, 0)
    first, again = simulate(*pool, seed=3), simulate(*pool, seed=3)
    assert first == again
    assert first["cost_weights"]["radiologist_minute"] > first["cost_weights"]["annotator_minute"]
    assert first["adaptive_adjudications_fixed"] == first["raw"]["runs"]["fixed_unanimous"]["adjudications"]
    assert np.isfinite(first["adaptive_cost_saved_pct"]) and np.isfinite(first["adaptive_accuracy_change_pts"])
