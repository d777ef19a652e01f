"""summarize / predict_param_count: exact predictions without the model, JSON only."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import net2net

from .zoo import ZOO, Case, PreLNMLP, ResNet, build, mlp_bn, odd_widths


@pytest.fixture(params=ZOO, ids=[c.name for c in ZOO])
def case(request: pytest.FixtureRequest) -> Case:
    c: Case = request.param
    return c


def test_summary_is_json_and_predicts_widening_exactly(case: Case) -> None:
    model, x = build(case)
    summary = json.loads(json.dumps(net2net.summarize(model, x)))
    assert summary["param_count"] == net2net.count_params(model)
    assert {g["name"] for g in summary["groups"]} == {
        g.name for g in net2net.width_groups(model, x)
    }
    assert [p["name"] for p in summary["params"]] == [n for n, _ in model.named_parameters()]
    groups = net2net.width_groups(model, x)
    requests: list[dict[str, object]] = [
        {"factor": 2.0},
        {"factor": 1.5},
        {"factor": 3.0},
        {"widths": odd_widths(groups)},
        {"widths": {groups[-1].name: groups[-1].width * 4}},
    ]
    for kwargs in requests:
        try:
            real = net2net.count_params(net2net.widen(model, x, **kwargs).model)  # type: ignore[arg-type]
        except net2net.GrowthError as err:
            with pytest.raises(net2net.GrowthError) as pred_err:
                net2net.predict_param_count(summary, **kwargs)  # type: ignore[arg-type]
            assert str(pred_err.value).split(": ", 1)[1] == str(err).split(": ", 1)[1]
            continue
        assert net2net.predict_param_count(summary, **kwargs) == real  # type: ignore[arg-type]


def test_deepen_predictions_for_every_candidate() -> None:
    torch.manual_seed(0)
    for model, x in ((mlp_bn(), torch.randn(4, 6)), (PreLNMLP(), torch.randn(4, 6))):
        summary = net2net.summarize(model, x)
        assert summary["deepen_candidates"]
        for cand in summary["deepen_candidates"]:
            for style in ("identity", "residual"):
                if cand["added_params"][style] is None:
                    with pytest.raises(net2net.GrowthError):
                        net2net.deepen(model, x, after=cand["after"], style=style)
                    continue
                grown = net2net.deepen(model, x, after=cand["after"], style=style)
                assert grown.max_abs_error < 1e-5
                assert net2net.predict_param_count(
                    summary, deepen_after=cand["after"], style=style
                ) == net2net.count_params(grown.model)


def test_deepen_candidates_describe_the_position() -> None:
    model = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 2)
    )
    cands = {
        c["after"]: c for c in net2net.summarize(model, torch.randn(3, 4))["deepen_candidates"]
    }
    assert cands["2"]["kind"] == "linear" and cands["2"]["width"] == 6
    assert cands["2"]["batch_norm"] and cands["2"]["identity_exact"]
    assert cands["2"]["added_params"] == {"identity": 6 * 6 + 6 + 2 * 6, "residual": 2 * 42 + 12}
    assert not cands["4"]["identity_exact"] and cands["4"]["added_params"]["identity"] is None
    assert cands["4"]["residual_exact"]
    conv = {
        c["after"]: c
        for c in net2net.summarize(ResNet(), torch.randn(2, 3, 8, 8))["deepen_candidates"]
    }
    assert conv["layer1"]["kind"] == "conv2d" and conv["layer1"]["width"] == 8
    assert "layer1.0.relu" not in conv  # called twice: no single "after"


def test_count_params_counts_shared_once() -> None:
    a = nn.Linear(3, 3)
    m = nn.Sequential(a, nn.ReLU(), a)
    assert net2net.count_params(m) == 12


def test_predict_argument_errors() -> None:
    summary = net2net.summarize(mlp_bn(), torch.randn(4, 6))
    with pytest.raises(net2net.GrowthError, match="one op at a time"):
        net2net.predict_param_count(summary, factor=2.0, deepen_after="2")
    with pytest.raises(net2net.GrowthError, match="not a deepen candidate"):
        net2net.predict_param_count(summary, deepen_after="nope")
    with pytest.raises(net2net.GrowthError, match="give exactly one of factor= or widths="):
        net2net.predict_param_count(summary)
