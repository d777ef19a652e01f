"""The controller on staged streams: guards hold, reasons carry numbers, state survives restarts."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from growth_policy import (
    Controller,
    Decision,
    GrowthOp,
    GrowthPolicyConfig,
    GrowthRequest,
    Observation,
    PolicyContext,
    Verdict,
    derive_seed,
    estimate_memory_bytes,
    register_policy,
    unregister_policy,
)

from ._traces import Run, make_obs, mlp_params, mlp_summary, simulate

STAGES = [1000, 2000, 4000, 8000, 16000, 32000]


def cfg(**kw: Any) -> GrowthPolicyConfig:
    return GrowthPolicyConfig.model_validate(kw)


def test_default_policy_on_a_staged_stream() -> None:
    run = simulate(Controller(), stages=STAGES, steps_per_stage=1500)
    growths = [(o, d) for o, d in run.growths if d.op is not None and d.op.op == "widen"]
    sp = [(o, d) for o, d in run.growths if d.op is not None and d.op.op == "shrink_perturb"]
    assert len(growths) >= 3
    # One widen per stage, each followed by a shrink-and-perturb (the data doubled) from stage 2.
    assert [o.dataset_size for o, _ in growths] == STAGES
    assert [o.dataset_size for o, _ in sp] == STAGES[1:]
    assert [o.step for o, _ in sp] == [o.step + 50 for o, _ in growths[1:]]
    # Never during the first pass over the first stage.
    first_stage = STAGES[0]
    assert all(o.samples_seen >= first_stage for o, _ in growths)
    # Cooldown and minimum generation steps hold between growths.
    steps = [o.step for o, _ in growths]
    assert all(b - a >= 300 for a, b in itertools.pairwise(steps))
    assert all(o.generation_step >= 100 for o, _ in growths)
    for o, d in growths:
        assert d.notable
        assert d.numbers["params_before"] == o.param_count
        assert d.numbers["params_after"] <= 10_000_000
        assert "→" in d.reason and "parameters" in d.reason
    # Growth follows the data: never more than twice the data-scaling target (3 per sample).
    for o, d in growths:
        assert int(d.numbers["params_after"]) <= 2 * 3 * o.dataset_size
    # The model ends near the target for 32k samples (96k), not at a blind ×2 per stage (16 → 512).
    final = mlp_params(40, run.widths, 10)
    assert 90_000 <= final <= 110_000


def test_growth_reason_names_policy_and_numbers() -> None:
    c = Controller()
    d = c.observe(
        make_obs(
            dataset_size=1000,
            param_count=1098,
            summary=mlp_summary(40, [16, 16], 10),
        )
    )
    assert d.grows and d.op is not None
    assert d.policy == "data_scaling"
    assert d.op.factor == 2.13
    assert d.reason == (
        "1,000 samples call for 3.0k parameters (3 × 1,000^1), the model has 1.1k "
        "(target ×2.73 >= ×1.5): widening all groups ×2.13, 1.1k → 3.1k parameters; "
        "data: no growth before on this job's data"
    )
    assert d.numbers["params_after"] == mlp_params(40, [35, 35], 10)
    assert d.op.seed == derive_seed(0, 1)


def test_never_grows_during_the_first_pass_over_the_first_stage() -> None:
    # Batch 8: one pass over 1,000 samples takes 125 steps; data_scaling wants to grow from step 1.
    c = Controller(cfg(guards={"min_generation_steps": 0}))
    decisions = []
    for step in range(10, 200, 10):
        o = make_obs(
            step=step,
            generation_step=step,
            samples_seen=8 * step,
            dataset_size=1000,
            summary=mlp_summary(40, [16, 16], 10),
        )
        decisions.append((o, c.observe(o)))
        if decisions[-1][1].grows:
            break
    refusals = [d for o, d in decisions if not d.grows]
    assert all(o.samples_seen < 1000 for o, d in decisions if not d.grows)
    assert decisions[-1][0].samples_seen >= 1000 and decisions[-1][1].grows
    assert refusals[0].policy == "warmup"
    assert refusals[0].reason.startswith(
        "warm-up: 80 of 1,000 samples seen (1 pass over the first 1,000 samples); "
        "data_scaling would grow"
    )
    assert refusals[0].notable
    assert not any(d.notable for d in refusals[1:])  # the same refusal is not repeated


def grown_controller(**kw: Any) -> tuple[Controller, Observation]:
    """A controller that decided a growth at step 1000 and saw it applied at step 1001."""
    c = Controller(cfg(**kw))
    c.request(GrowthOp(op="widen", widths={"fc0": 31, "fc1": 31}), "setup")
    d = c.observe(make_obs(summary=mlp_summary(40, [16, 16], 10)))
    assert d.grows
    o = make_obs(
        step=1050,
        generation=1,
        generation_step=49,
        param_count=mlp_params(40, [31, 31], 10),
        dataset_size=1000,
        summary=mlp_summary(40, [31, 31], 10),
    )
    return c, o


def test_cooldown_starts_at_the_growth_actually_applied() -> None:
    c, o = grown_controller(guards={"min_generation_steps": 0}, data_scaling={"coefficient": 20})
    d = c.observe(o)
    assert not d.grows
    assert d.policy == "cooldown"
    assert d.reason.startswith("cooldown: 49 of 300 steps since the growth at step 1001;")
    assert d.numbers["steps_since_growth"] == 49
    assert d.notable
    # The same state again is not notable; growth resumes at step 1301 exactly.
    later = [
        c.observe(o.model_copy(update={"step": s, "generation_step": s - 1001}))
        for s in range(1100, 1400, 50)
    ]
    assert [x.notable for x in later[:4]] == [False] * 4
    assert [x.grows for x in later] == [False, False, False, False, False, True]
    assert later[-1].step == 1350


def test_notify_grown_pins_the_cooldown() -> None:
    c = Controller(cfg(guards={"min_generation_steps": 0}, data_scaling={"coefficient": 20}))
    assert c.observe(make_obs(summary=mlp_summary(40, [16, 16], 10))).grows
    c.notify_grown(step=1010, generation=1)
    assert c.pending is None
    d = c.observe(make_obs(step=1300, generation=1, generation_step=290))
    assert d.reason.startswith("cooldown: 290 of 300 steps since the growth at step 1010")


def test_pending_growth_waits_then_times_out() -> None:
    c = Controller(cfg(guards={"apply_timeout_steps": 200}))
    first = c.observe(make_obs(summary=mlp_summary(40, [16, 16], 10)))
    assert first.grows
    assert c.pending == first.op
    wait = c.observe(make_obs(step=1050, generation_step=1050))
    assert not wait.grows and not wait.notable
    assert wait.reason == "waiting for the growth decided at step 1000 to be applied"
    timeout = c.observe(make_obs(step=1200, generation_step=1200))
    assert timeout.notable and not timeout.grows
    assert "was not applied within 200 steps (generation still 0)" in timeout.reason
    assert c.pending is None
    # It counts as failed: the cooldown runs from step 1200.
    d = c.observe(make_obs(step=1250, generation_step=1250))
    assert d.policy == "cooldown"
    assert "cooldown: 50 of 300 steps since the growth at step 1200" in d.reason


def test_notify_failed_is_reported_and_starts_the_cooldown() -> None:
    c = Controller()
    assert c.observe(make_obs(summary=mlp_summary(40, [16, 16], 10))).grows
    c.notify_failed(step=1010, error="GrowthError: boom")
    failed = c.observe(make_obs(step=1050, generation_step=1050))
    assert not failed.grows and failed.notable
    assert failed.reason == (
        "the growth decided at step 1000 failed at step 1010: GrowthError: boom; "
        "cooling down for 300 steps"
    )
    d = c.observe(make_obs(step=1100, generation_step=1100))
    assert d.policy == "cooldown" and d.notable
    assert d.reason.startswith("cooldown: 90 of 300 steps since the growth at step 1010")


def test_every_manual_refusal_is_notable() -> None:
    c = Controller(cfg(policies=["manual"], guards={"max_params": 1200}))
    for _ in range(2):
        c.request(GrowthOp(op="widen", factor=2.0), "again")
        d = c.observe(make_obs(summary=mlp_summary(40, [16, 16], 10)))
        assert not d.grows and d.notable
        assert d.reason == (
            "manual request (again) refused: max params 1.2k would be exceeded: 1.1k → 2.7k"
        )


def test_never_above_max_params() -> None:
    run = simulate(
        Controller(cfg(guards={"max_params": 20_000}, data_scaling={"coefficient": 10})),
        stages=STAGES,
        steps_per_stage=1500,
    )
    assert run.growths
    assert max(o.param_count for o, _ in run.decisions) <= 20_000
    refusals = [d for _, d in run.decisions if d.policy == "max_params" and d.notable]
    assert refusals
    assert "max params 20.0k would be exceeded" in refusals[0].reason


def test_memory_guard_holds_on_a_stream() -> None:
    budget = 64 * 1024  # bytes: the base model fits, the data-scaling targets soon do not
    c = Controller(cfg(memory={"budget_gb": budget / 2**30, "batch_size": 16}, strategy="widen"))
    run = simulate(c, stages=STAGES, steps_per_stage=600)
    assert run.growths
    for o, _ in run.decisions:
        assert o.summary is not None
        units = sum(g["width"] for g in o.summary["groups"])
        assert estimate_memory_bytes(o.param_count, units, batch_size=16) <= budget
    refusal = next(d for _, d in run.decisions if d.policy == "memory")
    assert refusal.reason.startswith("memory budget 0.00 GiB would be exceeded: ")
    assert int(refusal.numbers["memory_bytes"]) > budget


def test_no_growth_while_overfitting_with_plateau() -> None:
    def overfit(step: int, gen_step: int, size: int, params: int) -> tuple[float, float]:
        return 0.1, 0.9  # flat train loss, gap 800%

    c = Controller(cfg(policies=["plateau"], shrink_perturb={"enabled": False}))
    run = simulate(c, stages=[1000, 2000], steps_per_stage=1500, loss=overfit)
    assert not run.growths
    notable = [d for _, d in run.decisions if d.notable]
    assert len(notable) == 1
    assert notable[0].policy == "plateau"
    assert notable[0].reason.startswith(
        "overfitting: validation loss 0.9 is 800% above train loss 0.1 (> 50%): "
        "not growing, waiting for data"
    )


def test_gap_guard_blocks_every_automatic_growth_when_set() -> None:
    c = Controller(cfg(guards={"max_gap": 0.2}))
    d = c.observe(make_obs(train_loss=0.5, val_loss=1.0, summary=mlp_summary(40, [16, 16], 10)))
    assert not d.grows
    assert d.policy == "overfitting"
    assert d.reason.startswith("overfitting: gap 100% > 20%: waiting for data; data_scaling")


def test_plateau_grows_when_underfitting() -> None:
    def stuck(step: int, gen_step: int, size: int, params: int) -> tuple[float, float]:
        return 1.0, 1.02

    c = Controller(cfg(policies=["plateau"], widen={"mode": "factor"}))
    run = simulate(c, stages=[1000], steps_per_stage=2000, loss=stuck)
    steps = [o.step for o, _ in run.growths]
    # Window 300 from the first observation at 50: first at 350; then cooldown + window each time.
    assert steps[0] == 350
    assert all(b - a >= 300 for a, b in itertools.pairwise(steps))
    assert (
        "train loss improved 0% over 300 steps (< 1%), gap 2% (<= 50%)" in run.growths[0][1].reason
    )


def test_max_generations() -> None:
    c = Controller(cfg(guards={"max_generations": 2, "cooldown_steps": 0}))
    run = simulate(c, stages=STAGES, steps_per_stage=1500)
    assert len(run.growths) == 2
    assert any(
        d.policy == "max_generations" and d.reason.startswith("max generations 2 reached")
        for _, d in run.decisions
    )
    c.request(GrowthOp(op="widen", factor=2.0), "user asked")
    o = run.decisions[-1][0].model_copy(update={"step": 99_999})
    d = c.observe(o)
    assert not d.grows and d.policy == "manual"
    assert d.reason == "manual request (user asked) refused: max generations 2 reached"


def test_manual_request_bypasses_cooldown_but_not_max_params() -> None:
    c, o = grown_controller(policies=["manual"])
    c.observe(o)
    c.request(GrowthOp(op="widen", factor=2.0), "more capacity")
    d = c.observe(o.model_copy(update={"step": 1100, "generation_step": 99}))
    assert d.grows and d.policy == "manual"
    assert d.op is not None and d.op.factor == 2.0
    assert d.op.seed == derive_seed(0, 2)
    assert (
        d.reason == "manual request (more capacity): widening all groups ×2, 2.6k → 7.1k parameters"
    )

    c2, o2 = grown_controller(policies=["manual"], guards={"max_params": 5000})
    c2.request(GrowthOp(op="widen", factor=2.0), "too big")
    d2 = c2.observe(o2)
    assert not d2.grows
    assert (
        d2.reason
        == "manual request (too big) refused: max params 5.0k would be exceeded: 2.6k → 7.1k"
    )
    assert d2.notable


def test_manual_request_without_op_uses_the_strategy() -> None:
    c = Controller(cfg(policies=["manual"], strategy="deepen"))
    c.request(reason="deeper please")
    d = c.observe(make_obs(summary=mlp_summary(40, [16, 16], 10)))
    assert d.op is not None and d.op.op == "deepen" and d.op.after == "act1"


def test_manual_only_never_grows_by_itself() -> None:
    run = simulate(Controller(cfg(policies=["manual"])), stages=STAGES, steps_per_stage=600)
    assert not run.growths
    assert not any(d.notable for _, d in run.decisions)


def test_alternate_strategy_widens_then_deepens() -> None:
    c = Controller(
        cfg(
            strategy="alternate",
            data_scaling={"coefficient": 40},
            shrink_perturb={"enabled": False},
        )
    )
    run = simulate(c, stages=STAGES[:4], steps_per_stage=900)
    kinds = [d.op.op for _, d in run.growths if d.op is not None]
    assert kinds[:4] == ["widen", "deepen", "widen", "deepen"]


def test_auto_strategy_deepens_when_widening_is_blocked() -> None:
    c = Controller(cfg(widen={"max_width": 16}))
    d = c.observe(make_obs(summary=mlp_summary(40, [16, 16], 10)))
    assert d.op is not None and d.op.op == "deepen"
    assert "(cannot widen: every width group that could grow is at the width limit 16)" in d.reason


def test_refusal_from_the_plan_names_the_policy_that_wanted_growth() -> None:
    c = Controller(cfg(strategy="widen", guards={"max_params": 1200}))
    d = c.observe(make_obs(summary=mlp_summary(40, [16, 16], 10)))
    assert not d.grows
    assert d.policy == "max_params"
    assert d.reason.startswith(
        "max params 1.2k would be exceeded: 1.1k → 3.1k; data_scaling would grow: 1,000 samples"
    )


def decisions_json(ds: list[Decision]) -> list[dict[str, Any]]:
    return [d.model_dump(mode="json") for d in ds]


def test_state_dict_round_trip_reproduces_later_decisions() -> None:
    config = cfg(policies=["data_scaling", "plateau"])
    reference = Controller(config, seed=7)
    run = simulate(reference, stages=STAGES, steps_per_stage=1500)
    cut = 130  # mid-stream, inside a stage
    first = Controller(config, seed=7)
    replay = Run(widths=[16, 16])
    for o, _ in run.decisions[:cut]:
        replay.decisions.append((o, first.observe(o)))
    state = json.loads(json.dumps(first.state_dict()))
    second = Controller(config, seed=0)
    second.load_state_dict(state)
    assert second.seed == 7
    later = [second.observe(o) for o, _ in run.decisions[cut:]]
    assert decisions_json(later) == decisions_json([d for _, d in run.decisions[cut:]])
    assert any(d.grows for d in later)


def test_state_dict_keeps_pending_growth_requests_and_cooldown() -> None:
    c, o = grown_controller(policies=["manual"])
    c.observe(o)
    c.request(GrowthOp(op="widen", factor=2.0), "queued")
    restored = Controller(cfg(policies=["manual"]))
    restored.load_state_dict(json.loads(json.dumps(c.state_dict())))
    d = restored.observe(o.model_copy(update={"step": 1100, "generation_step": 99}))
    assert d.grows and d.reason.startswith("manual request (queued)")
    with pytest.raises(ValueError, match="state version"):
        restored.load_state_dict({"version": 99})


def test_same_observations_same_decisions_and_seeds_matter() -> None:
    a = simulate(Controller(seed=3), stages=STAGES, steps_per_stage=900)
    b = simulate(Controller(seed=3), stages=STAGES, steps_per_stage=900)
    c = simulate(Controller(seed=4), stages=STAGES, steps_per_stage=900)
    assert decisions_json([d for _, d in a.decisions]) == decisions_json(
        [d for _, d in b.decisions]
    )
    seeds_a = [d.op.seed for _, d in a.growths if d.op is not None]
    seeds_c = [d.op.seed for _, d in c.growths if d.op is not None]
    assert len(set(seeds_a)) == len(seeds_a)
    assert seeds_a != seeds_c
    assert seeds_a[0] == derive_seed(3, 1)


def test_history_is_bounded_and_forgets_steps_after_a_resume() -> None:
    c = Controller(cfg(history_size=10, policies=["manual"]))
    for s in range(50, 1050, 50):
        c.observe(make_obs(step=s, generation_step=s))
    assert len(c.history) == 10
    assert c.history[-1].step == 1000
    assert all(o.summary is None for o in c.history)
    c.observe(make_obs(step=700, generation_step=700))  # resumed from a checkpoint at step 700
    assert [o.step for o in c.history][-3:] == [600, 650, 700]


def test_a_failing_custom_policy_is_reported_not_raised() -> None:
    def broken(ctx: PolicyContext) -> Verdict:
        raise RuntimeError("bad policy")

    register_policy("broken_test", broken)
    try:
        c = Controller(cfg(policies=["broken_test", "data_scaling"]))
        d = c.observe(make_obs(summary=mlp_summary(40, [16, 16], 10)))
        assert d.grows and d.policy == "data_scaling"
        c2 = Controller(cfg(policies=["broken_test"]))
        d2 = c2.observe(make_obs())
        assert d2.notable and "policy broken_test failed: RuntimeError: bad policy" in d2.reason
    finally:
        unregister_policy("broken_test")


def test_unreadable_summary_falls_back_to_an_estimate_and_says_so() -> None:
    c = Controller(cfg(widen={"mode": "factor"}))
    d = c.observe(make_obs(summary={"groups": "nope"}))
    assert d.grows and d.op is not None and d.op.factor == 2.0
    assert (
        "(model summary unreadable: summary: 'groups' must be a list of width groups)" in d.reason
    )


def test_config_as_a_mapping_and_the_workers_growth_event() -> None:
    c = Controller({"guards": {"min_generation_steps": 0}, "data_scaling": {"coefficient": 20}})
    assert c.config.data_scaling.coefficient == 20
    assert c.observe(make_obs(summary=mlp_summary(40, [16, 16], 10))).grows
    c.on_growth(SimpleNamespace(step=1010, generation_after=1, op=GrowthOp(op="widen", factor=2.0)))
    assert c.pending is None
    d = c.observe(make_obs(step=1100, generation=1, generation_step=90))
    assert d.reason.startswith("cooldown: 90 of 300 steps since the growth at step 1010")
    with pytest.raises(ValidationError):
        Controller({"bogus": 1})


# ---------------------------------------------------------------- requests by id

WIDEN2 = GrowthOp(op="widen", factor=2.0)
SUMMARY = mlp_summary(40, [16, 16], 10)


def test_requests_are_queued_listed_and_dropped_by_id() -> None:
    c = Controller(cfg(policies=["manual"]))
    first = c.request(WIDEN2, "first")
    assert len(first) == 32 and int(first, 16) >= 0  # a fresh uuid hex
    assert c.request(reason="second", request_id="cmd-2") == "cmd-2"
    third = c.request(GrowthOp(op="deepen", after="act0"), "third")
    assert third not in (first, "cmd-2")
    assert c.requests == (
        GrowthRequest(id=first, op=WIDEN2, reason="first"),
        GrowthRequest(id="cmd-2", op=None, reason="second"),
        GrowthRequest(id=third, op=GrowthOp(op="deepen", after="act0"), reason="third"),
    )
    # The same id again changes nothing, whatever it asks.
    assert c.request(WIDEN2, "again", request_id="cmd-2") == "cmd-2"
    assert [(r.id, r.reason) for r in c.requests] == [
        (first, "first"),
        ("cmd-2", "second"),
        (third, "third"),
    ]
    assert c.drop_request("cmd-2") is True
    assert c.drop_request("cmd-2") is False
    assert c.drop_request("never") is False
    assert [r.id for r in c.requests] == [first, third]
    d = c.observe(make_obs(summary=SUMMARY))
    assert d.request_id == first and d.op is not None and d.op.factor == 2.0
    assert [r.id for r in c.requests] == [third]


def test_a_growth_request_is_typed_and_rejects_unknown_fields() -> None:
    r = GrowthRequest(id="a", op=WIDEN2, reason="r")
    assert GrowthRequest.model_validate(r.model_dump(mode="json")) == r
    with pytest.raises(ValidationError):
        GrowthRequest.model_validate({"id": "a", "reason": "r", "priority": 1})
    with pytest.raises(ValidationError, match="frozen"):
        r.id = "b"  # type: ignore[misc]


def test_a_manual_refusal_carries_the_request_id() -> None:
    c = Controller(cfg(policies=["manual"], guards={"max_params": 1200}))
    rid = c.request(WIDEN2, "too big", request_id="cmd-7")
    d = c.observe(make_obs(summary=SUMMARY))
    assert not d.grows and d.policy == "manual"
    assert d.request_id == "cmd-7" == rid
    assert d.reason.startswith("manual request (too big) refused: max params 1.2k")
    assert c.requests == () and c.pending_request is None
    # The next decision answers no request.
    assert c.observe(make_obs(step=1050, summary=SUMMARY)).request_id is None


def test_a_refusal_for_max_generations_carries_the_request_id() -> None:
    c = Controller(cfg(policies=["manual"], guards={"max_generations": 1}))
    c.request(WIDEN2, "late", request_id="cmd-9")
    d = c.observe(make_obs(generation=1, generation_step=10, summary=SUMMARY))
    assert not d.grows and d.request_id == "cmd-9"
    assert d.reason == "manual request (late) refused: max generations 1 reached"


def test_a_manual_growth_carries_the_request_id_and_a_policys_does_not() -> None:
    c = Controller(cfg(guards={"min_generation_steps": 0}, data_scaling={"coefficient": 20}))
    auto = c.observe(make_obs(summary=SUMMARY))
    assert auto.grows and auto.policy == "data_scaling"
    assert auto.request_id is None and c.pending_request is None
    assert c.notify_grown(step=1001, generation=1) is None

    m = Controller(cfg(policies=["manual"]))
    rid = m.request(WIDEN2, "more")
    d = m.observe(make_obs(summary=SUMMARY))
    assert d.grows and d.policy == "manual" and d.request_id == rid
    assert m.pending_request == rid and m.pending == d.op
    # Requesting the id of the pending growth again does not queue it twice.
    assert m.request(WIDEN2, "more", request_id=rid) == rid
    assert m.requests == ()
    wait = m.observe(make_obs(step=1050, summary=SUMMARY))
    assert not wait.grows and wait.request_id is None


def test_notify_grown_and_on_growth_return_the_request_answered() -> None:
    c = Controller(cfg(policies=["manual"]))
    c.request(WIDEN2, "more", request_id="cmd-1")
    assert c.observe(make_obs(summary=SUMMARY)).request_id == "cmd-1"
    assert c.notify_grown(step=1001, generation=1, op=WIDEN2) == "cmd-1"
    assert c.pending_request is None and c.pending is None
    assert c.notify_grown(step=1002, generation=2) is None  # nothing pending any more

    c.request(WIDEN2, "again", request_id="cmd-2")
    o = make_obs(step=1100, generation=2, generation_step=98, summary=SUMMARY)
    assert c.observe(o).request_id == "cmd-2"
    event = SimpleNamespace(step=1101, generation_after=3, op=WIDEN2)
    assert c.on_growth(event) == "cmd-2"
    assert c.on_growth(event) is None


def test_notify_failed_returns_the_request_answered() -> None:
    c = Controller(cfg(policies=["manual"]))
    c.request(WIDEN2, "more", request_id="cmd-3")
    assert c.observe(make_obs(summary=SUMMARY)).grows
    assert c.notify_failed(step=1010, error="GrowthError: boom") == "cmd-3"
    assert c.pending_request is None
    assert c.notify_failed(step=1020, error="again") is None

    auto = Controller(cfg(guards={"min_generation_steps": 0}, data_scaling={"coefficient": 20}))
    assert auto.observe(make_obs(summary=SUMMARY)).grows
    assert auto.notify_failed(step=1010, error="boom") is None


def test_state_dict_round_trip_keeps_request_ids() -> None:
    c = Controller(cfg(policies=["manual"]))
    c.request(WIDEN2, "applied first", request_id="cmd-1")
    c.request(GrowthOp(op="deepen", after="act0"), "queued", request_id="cmd-2")
    c.request(reason="by strategy")
    assert c.observe(make_obs(summary=SUMMARY)).request_id == "cmd-1"
    state = json.loads(json.dumps(c.state_dict()))
    assert state["version"] == 2
    restored = Controller(cfg(policies=["manual"]))
    restored.load_state_dict(state)
    assert restored.requests == c.requests
    assert restored.requests[0].id == "cmd-2"
    assert restored.pending_request == "cmd-1"
    assert restored.notify_grown(step=1001, generation=1) == "cmd-1"
    o = make_obs(step=1100, generation=1, generation_step=99, summary=mlp_summary(40, [32, 32], 10))
    d = restored.observe(o)
    assert d.request_id == "cmd-2" and d.op is not None and d.op.op == "deepen"


def test_a_version_1_state_loads_and_its_requests_get_fresh_ids() -> None:
    c = Controller(cfg(policies=["manual"]))
    c.request(WIDEN2, "applied first")
    c.request(GrowthOp(op="deepen", after="act0"), "queued")
    c.request(reason="by strategy")
    assert c.observe(make_obs(summary=SUMMARY)).grows
    v1 = json.loads(json.dumps(c.state_dict()))
    v1["version"] = 1
    for r in v1["requests"]:
        del r["id"]
    del v1["pending"]["request_id"]
    assert v1["requests"] == [
        {"op": GrowthOp(op="deepen", after="act0").model_dump(mode="json"), "reason": "queued"},
        {"op": None, "reason": "by strategy"},
    ]
    restored = Controller(cfg(policies=["manual"]))
    restored.load_state_dict(v1)
    assert [(r.op, r.reason) for r in restored.requests] == [
        (GrowthOp(op="deepen", after="act0"), "queued"),
        (None, "by strategy"),
    ]
    ids = [r.id for r in restored.requests]
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)
    assert restored.pending == c.pending and restored.pending_request is None
    assert restored.notify_grown(step=1001, generation=1) is None
    o = make_obs(step=1100, generation=1, generation_step=99, summary=mlp_summary(40, [32, 32], 10))
    d = restored.observe(o)
    assert d.request_id == ids[0] and d.reason.startswith("manual request (queued)")
    assert restored.state_dict()["version"] == 2
