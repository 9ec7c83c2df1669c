"""The claims table: one verdict rule, paired tests in the paper's direction, p-values at their resolution."""
import pytest

from invar_rag_lib.report.claims import fmt_p, paired_test, verdict


def _t(effect, p):
    return {"effect": effect, "p": p, "mde": 0.1}


@pytest.mark.parametrize("tests, expected", [
    ({"nq": _t(0.2, 0.001), "tqa": _t(0.1, 0.01), "popqa": _t(0.0, 1.0)}, "reproduced"),
    ({"nq": _t(0.2, 0.001), "tqa": _t(0.1, 0.01), "popqa": _t(-0.1, 0.01)}, "not detectable at this n"),
    ({"nq": _t(-0.2, 0.001), "tqa": _t(-0.1, 0.01), "popqa": _t(0.1, 0.01)}, "not reproduced"),
    ({"nq": _t(0.2, 0.001), "tqa": _t(0.1, 0.2), "popqa": _t(0.1, 0.3)}, "not detectable at this n"),
    ({}, "not run"),
])
def test_verdict_rule(tests, expected):
    assert verdict(tests) == expected


def test_paired_test_points_the_effect_in_the_papers_direction():
    a, b = [1, 1, 1, 0] * 10, [0, 0, 1, 0] * 10
    up = paired_test(a, b, True, 500, 0)
    down = paired_test(b, a, False, 500, 0)  # lower is better: b below a is the paper's direction
    assert up["effect"] == pytest.approx(0.5) and down["effect"] == pytest.approx(0.5)
    assert up["p"] < 0.01 and up["mde"] > 0
    assert paired_test(a, a, True, 500, 0)["p"] == 1.0


def test_p_values_below_the_bootstrap_resolution_are_shown_as_a_bound():
    assert fmt_p(0.0, 1000) == "< 0.002"
    assert fmt_p(0.0123, 1000) == "0.012"
