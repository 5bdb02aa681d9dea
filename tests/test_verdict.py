"""The one verdict every results view shows: did a refinement unlearn the shortcut?"""

from __future__ import annotations

import pytest

from exbl_core.verdict import MIN_ROOM, NOTHING_TO_UNLEARN, recovered, shortcut_verdict


def _model(test: float, shortcut_test: float) -> dict:
    return {"test": {"accuracy": test}, "shortcut_test": {"accuracy": shortcut_test}}


def test_recovering_most_of_the_oracles_gain_with_accuracy_kept_is_unlearned():
    v = shortcut_verdict(_model(0.99, 0.55), _model(0.98, 0.80), _model(0.99, 0.99))
    assert v.label == "unlearned" and v.success and v.recovered == pytest.approx(0.25 / 0.44)


def test_unlearning_by_forgetting_the_disease_is_not_unlearned():
    v = shortcut_verdict(_model(0.99, 0.55), _model(0.85, 0.85), _model(0.99, 0.99))
    assert v.label == "not unlearned" and not v.success and "below 0.90" in v.sentence


def test_a_model_that_hardly_used_the_shortcut_has_nothing_to_unlearn_rather_than_a_huge_recovery():
    # One shortcut-test point of room: a 1.5-point wobble would read as a 150% "recovery".
    unrefined, refined, oracle = _model(0.99, 0.980), _model(0.99, 0.995), _model(0.99, 0.990)
    v = shortcut_verdict(unrefined, refined, oracle)
    assert v.label == NOTHING_TO_UNLEARN and v.recovered is None and not v.success
    assert "hardly better" in v.sentence
    assert recovered(0.995, 0.980, 0.990) is None
    assert recovered(0.80, 0.55, 0.55 + MIN_ROOM) is not None


def test_without_an_oracle_a_small_gap_before_refinement_leaves_nothing_to_unlearn_and_a_halved_gap_is_reduced():
    v = shortcut_verdict(_model(0.99, 0.97), _model(0.99, 0.99))
    assert v.label == NOTHING_TO_UNLEARN and not v.success and "needs the oracle" in v.sentence
    v = shortcut_verdict(_model(0.99, 0.59), _model(0.98, 0.90))
    assert v.label == "shortcut reduced" and v.success
    v = shortcut_verdict(_model(0.99, 0.59), _model(0.99, 0.70))
    assert v.label == "shortcut still used" and not v.success
