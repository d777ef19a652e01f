"""Decision sources: scripts, the controller in-process, the JSON-lines recorder, pickling."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle

from growth_policy.types import Decision, GrowthOp, Observation
from workers.sources import (
    BaseSource,
    ControllerSource,
    DecisionSource,
    Directive,
    GrowthEvent,
    JsonlRecorder,
    LoopStatus,
    ScriptedAction,
    ScriptedSource,
    read_jsonl,
)

WIDEN = GrowthOp(op="widen", factor=2.0, seed=3)


def obs(step: int, version: int = 1, size: int = 100, **kwargs: Any) -> Observation:
    return Observation(
        step=step,
        generation=0,
        generation_step=step,
        samples_seen=step * 10,
        passes=1.0,
        dataset_size=size,
        dataset_version=version,
        train_loss=1.0,
        param_count=1000,
        **kwargs,
    )


def status(state: str, version: int = 1) -> LoopStatus:
    return LoopStatus(state=state, step=0, generation=0, dataset_version=version)  # type: ignore[arg-type]


def test_every_source_is_a_decision_source() -> None:
    for source in (BaseSource(), ScriptedSource([]), ControllerSource(None)):
        assert isinstance(source, DecisionSource)
    assert not isinstance(object(), DecisionSource)


def test_script_fires_each_action_once_when_its_conditions_hold() -> None:
    source = ScriptedSource(
        [
            ScriptedAction(at_step=200, op=WIDEN, reason="widen at 200"),
            ScriptedAction(at_step=300, min_dataset_version=3, stop=True),
        ]
    )
    assert source.decide(obs(100)) == Directive()
    first = source.decide(obs(220))
    assert first.op == WIDEN and first.reason == "widen at 200" and first.policy == "scripted"
    assert source.decide(obs(240)) == Directive()  # fired once
    assert source.decide(obs(400, version=2)) == Directive()  # waits for version 3
    assert source.decide(obs(420, version=3)).stop
    assert source.state_dict() == {"fired": [0, 1]}
    resumed = ScriptedSource(source.actions)
    resumed.load_state_dict({"fired": [0]})
    assert resumed.decide(obs(220)) == Directive()  # the widen is not repeated after a resume


def test_pause_for_a_time_and_until_a_dataset_version() -> None:
    source = ScriptedSource(
        [
            ScriptedAction(at_step=10, pause_until_dataset_version=2),
            ScriptedAction(at_step=20, pause_seconds=0.05),
        ]
    )
    assert source.decide(obs(10)).pause
    assert source.poll(status("paused", version=1)).pause
    assert not source.poll(status("paused", version=2)).pause
    assert source.decide(obs(20, version=2)).pause
    assert source.poll(status("paused", version=2)).pause
    import time

    time.sleep(0.06)
    assert not source.poll(status("paused", version=2)).pause
    # Already at the version: no pause at all.
    at = ScriptedSource([ScriptedAction(at_step=0, pause_until_dataset_version=1)])
    assert not at.decide(obs(5)).pause


def test_directive_from_a_controller_decision() -> None:
    decision = Decision(step=5, op=WIDEN, policy="plateau", reason="flat", numbers={"gap": 0.1})
    d = Directive.from_decision(decision)
    assert (d.op, d.policy, d.reason, d.numbers) == (WIDEN, "plateau", "flat", {"gap": 0.1})
    assert not d.pause and not d.stop and not d.checkpoint
    held = Directive.from_decision(decision, pause=True, stop=True)
    assert held.pause and held.stop and held.op == WIDEN
    assert Directive.from_decision(Decision(step=5, policy="", reason="nothing to do")).op is None


def test_a_source_without_the_failure_hook_is_not_a_decision_source() -> None:
    class Partial:
        def decide(self, observation: Observation) -> Directive:
            return Directive()

        def poll(self, status: LoopStatus) -> Directive:
            return Directive()

        def on_status(self, status: LoopStatus) -> None: ...

        def on_growth(self, event: GrowthEvent) -> None: ...

        def on_checkpoint(self, event: object) -> None: ...

        def state_dict(self) -> dict[str, Any]:
            return {}

        def load_state_dict(self, state: dict[str, Any]) -> None: ...

    assert not isinstance(Partial(), DecisionSource)
    assert isinstance(BaseSource(), DecisionSource)


def test_controller_source_decides_and_survives_pickling() -> None:
    source = ControllerSource(None, seed=1)
    decisions = [source.decide(obs(s * 50, size=2000)) for s in range(1, 4)]
    assert all(isinstance(d, Directive) for d in decisions)
    state = source.state_dict()
    assert state["controller"]["seed"] == 1
    clone = pickle.loads(ray.cloudpickle.dumps(source))
    assert clone._controller is None and clone._pending_state is not None
    assert clone.state_dict() == state  # rebuilt in the worker with the same state
    fresh = ControllerSource(None, seed=1)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state


def test_controller_source_is_told_of_growths() -> None:
    source = ControllerSource(None)
    source.on_growth(
        GrowthEvent(
            step=120,
            generation_before=0,
            generation_after=1,
            op=WIDEN,
            params_before=10,
            params_after=20,
            ranks_identical=True,
            transform_s=0.0,
            eval_s=0.0,
            checkpoint_s=0.0,
            pause_s=0.0,
        )
    )
    state = source.state_dict()["controller"]
    assert (state["generation"], state["last_growth_step"], state["growths"]) == (1, 120, 1)


def test_recorder_writes_every_call_and_delegates(tmp_path: Path) -> None:
    inner = ScriptedSource([ScriptedAction(at_step=10, op=WIDEN)])
    source = JsonlRecorder(inner, tmp_path / "events" / "log.jsonl")
    source.on_status(status("training"))
    assert source.decide(obs(5)) == Directive()
    assert source.decide(obs(10)).op == WIDEN
    source.on_growth_failed(WIDEN, 10, "GrowthError: nope")
    clone = pickle.loads(ray.cloudpickle.dumps(source))
    assert clone.state_dict() == {"fired": [0]}
    clone.on_status(status("stopped"))
    records = read_jsonl(tmp_path / "events" / "log.jsonl")
    assert [r["type"] for r in records] == [
        "status",
        "observation",
        "observation",
        "directive",
        "growth_failed",
        "status",
    ]
    assert records[3]["op"]["factor"] == 2.0
    assert records[4]["error"] == "GrowthError: nope"
    assert read_jsonl(tmp_path / "absent.jsonl") == []


@pytest.mark.parametrize("paused", [True, False])
def test_base_source_keeps_the_state(paused: bool) -> None:
    state = "paused" if paused else "waiting_for_data"
    assert BaseSource().poll(status(state)).pause is paused


def test_a_stop_file_ends_a_scripted_run(tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    source = ScriptedSource([ScriptedAction(at_step=0, op=WIDEN)], stop_file=str(stop))
    assert source.decide(obs(1)).op == WIDEN
    assert not source.poll(status("paused")).stop
    stop.touch()
    assert source.decide(obs(2)).stop
    assert source.poll(status("waiting_for_data")).stop
