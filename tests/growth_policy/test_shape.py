"""Reading net2net summaries and counting parameters exactly at other widths, without the model."""

from __future__ import annotations

from typing import Any

import pytest

from growth_policy import SummaryError, estimate_memory_bytes, parse_summary
from growth_policy.shape import activation_units, deepen_param_count

from ._traces import mlp_params, mlp_summary


def test_mlp_count_and_widen_counts_are_exact() -> None:
    shape = parse_summary(mlp_summary(40, [16, 16], 10))
    assert shape.count() == mlp_params(40, [16, 16], 10) == 1098
    assert shape.count(shape.widths_for_factor(2.0)) == mlp_params(40, [32, 32], 10)
    assert shape.count(shape.widths_for_factor(1.5)) == mlp_params(40, [24, 24], 10)
    assert shape.widths_for_factor(1.3) == {"fc0": 21, "fc1": 21}  # 20.8 → 21
    assert shape.count(shape.widths_for_factor(1.3)) == mlp_params(40, [21, 21], 10)
    assert shape.count({"fc1": 40}) == mlp_params(40, [16, 40], 10)


def conv_concat_summary() -> dict[str, Any]:
    """Two conv branches a (8 ch) and b (4 ch, grouped by 2) concatenated, 4×4 map flattened into
    fc(·, 10), in net2net's format."""
    return {
        "groups": [
            {"name": "a", "width": 8, "producers": ["a"], "consumers": ["fc"], "norms": []},
            {"name": "b", "width": 4, "elements_per_unit": 16, "multiple_of": 2},
        ],
        "params": [
            {"name": "a.weight", "dims": [{"terms": [["a", 8, 1]], "div": 1}, 3, 3, 3]},
            {"name": "a.bias", "dims": [{"terms": [["a", 8, 1]], "div": 1}]},
            # b: a grouped conv (groups=2) reading a: in_channels / groups.
            {
                "name": "b.weight",
                "dims": [
                    {"terms": [["b", 4, 1]], "div": 1},
                    {"terms": [["a", 8, 1]], "div": 2},
                    1,
                    1,
                ],
            },
            {
                "name": "fc.weight",
                "dims": [10, {"terms": [["a", 8, 16], ["b", 4, 16], [None, 5, 1]], "div": 1}],
            },
            {"name": "fc.bias", "dims": [10]},
        ],
    }


def test_concatenation_flatten_and_grouped_dims() -> None:
    shape = parse_summary(conv_concat_summary())
    assert shape.group("a").modules == ("a", "fc")
    assert shape.count() == 8 * 27 + 8 + 4 * 4 + 10 * ((8 + 4) * 16 + 5) + 10
    after = 16 * 27 + 16 + 8 * 8 + 10 * ((16 + 8) * 16 + 5) + 10
    assert shape.count(shape.widths_for_factor(2.0)) == after
    # b ×1.25 → 5, rounded up to a multiple of 2 → 6.
    assert shape.widths_for_factor(1.25) == {"a": 10, "b": 6}
    assert shape.count({"b": 6}) == 8 * 27 + 8 + 6 * 4 + 10 * ((8 + 6) * 16 + 5) + 10
    assert activation_units(shape) == 8 + 4 * 16


def test_shorthand_dims_for_hand_written_summaries() -> None:
    s: dict[str, Any] = {
        "groups": [{"name": "h", "width": 3}],
        "params": {"w": ["h", [{"group": "h", "scale": 4}, 2]]},
    }
    shape = parse_summary(s)
    assert shape.count() == 3 * (12 + 2)
    assert shape.count({"h": 5}) == 5 * (20 + 2)


def test_integer_factor_groups_round_the_factor_up() -> None:
    s: dict[str, Any] = {
        "groups": [
            {"name": "h", "width": 10, "constraints": ["LayerNorm 'ln' needs integer factors"]},
            {"name": "g", "width": 10},
        ],
        "params": [{"name": "w", "dims": ["h", "g"]}],
    }
    shape = parse_summary(s)
    assert shape.group("h").integer_factors
    assert shape.widths_for_factor(1.5) == {"h": 20, "g": 15}


def test_deepen_param_counts() -> None:
    s = mlp_summary(40, [16, 32], 10)
    shape = parse_summary(s)
    (act1,) = [c for c in shape.deepen_candidates if c.after == "act1"]
    assert shape.count() + deepen_param_count(act1) == mlp_params(40, [16, 32, 32], 10)
    assert deepen_param_count(act1) == 32 * 32 + 32
    given = {
        **s,
        "deepen_candidates": [
            {"after": "x", "width": 8, "added_params": {"identity": 584, "residual": 1168}}
        ],
    }
    cand = parse_summary(given).deepen_candidates[0]
    assert deepen_param_count(cand) == 584
    assert deepen_param_count(cand, "residual") == 1168
    bare = parse_summary({**s, "deepen_candidates": [{"after": "y", "width": 8}]})
    assert deepen_param_count(bare.deepen_candidates[0]) == 8 * 8 + 8  # a square Linear


def test_deepen_candidate_exactness() -> None:
    base = mlp_summary(4, [3], 2)
    for extra, expected in (
        ({"identity_exact": True}, True),
        ({"identity_exact": False}, False),
        ({}, None),
    ):
        s = {**base, "deepen_candidates": [{"after": "act0", "width": 3, **extra}]}
        assert parse_summary(s).deepen_candidates[0].exact_identity is expected


@pytest.mark.parametrize(
    ("summary", "message"),
    [
        ({"params": []}, "'groups' must be a list"),
        ({"groups": [{"width": 3}], "params": []}, r"groups\[0\]: needs a 'name'"),
        ({"groups": [], "params": [{"name": "w", "dims": ["h"]}]}, "unknown group 'h'"),
        ({"groups": [], "params": [{"name": "w", "dims": [2.5]}]}, "expected an integer"),
        ({"groups": []}, "'params' must list"),
    ],
)
def test_summary_errors_say_what_is_wrong(summary: dict[str, Any], message: str) -> None:
    with pytest.raises(SummaryError, match=message):
        parse_summary(summary)


def test_memory_estimate_formula() -> None:
    # 1M params × (weights + grads + 2 Adam slots) × 4 B + 128 × 1,000 units × 4 values × 4 B.
    got = estimate_memory_bytes(1_000_000, 1_000, batch_size=128)
    assert got == 16_000_000 + 2_048_000


def test_deepen_sites_are_after_each_groups_activation_never_after_the_head() -> None:
    shape = parse_summary(mlp_summary(40, [16, 24], 10))
    assert [c.after for c in shape.deepen_candidates] == ["fc0", "act0", "fc1", "act1", "head"]
    assert [c.after for c in shape.deepen_sites()] == ["act0", "act1"]
