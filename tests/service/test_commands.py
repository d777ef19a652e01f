"""The supervisor's command book against a real Redis and a real growth controller: grow commands
are queued in the controller by their id, and every one gets exactly one outcome."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import net2net
from growth_policy import Controller, GrowthOp, Observation
from service.jobs.spec import JobSpec, validate_job_spec
from service.runtime.commands import CommandBook
from service.state.states import CommandKind, CommandStatus
from service.state.store import RedisStore
from tests.service.conftest import JOB_SPEC
from workers.sources import GrowthEvent

pytestmark = pytest.mark.integration


def _summary() -> dict[str, Any]:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return net2net.summarize(model, torch.randn(4, 8))


def _obs(step: int, generation: int = 0) -> Observation:
    return Observation(
        step=step, generation=generation, generation_step=step, samples_seen=64 * step,
        passes=1.0, dataset_size=1000, train_loss=1.0, param_count=212, summary=_summary(),
    )  # fmt: skip


class Book:
    def __init__(self, store: RedisStore, spec: dict[str, Any]) -> None:
        self.spec: JobSpec = validate_job_spec(spec, max_workers=4)
        self.store = store
        self.job = store.create_job(self.spec, max_jobs=100, param_count=212)
        self.controller = Controller(self.spec.growth, seed=0)
        self.book = CommandBook(store, self.job.id, self.controller, self.spec.growth)

    def send(self, kind: CommandKind, args: dict[str, Any] | None = None) -> str:
        command = self.store.enqueue_command(self.job.id, kind, args)
        self.book.accept(command.id, command.kind, command.args)
        return command.id

    def status(self, command_id: str) -> tuple[CommandStatus, str | None]:
        record = self.store.get_command(self.job.id, command_id)
        assert record is not None
        return record.status, record.detail


def _grown(decision_op: GrowthOp) -> GrowthEvent:
    return GrowthEvent(
        step=50, generation_before=0, generation_after=1, op=decision_op, policy="manual",
        params_before=212, params_after=420, max_abs_error=0.0, ranks_identical=True,
        transform_s=0.1, eval_s=0.1, checkpoint_s=0.1, pause_s=0.3,
    )  # fmt: skip


def test_a_grow_command_is_queued_under_its_id_and_done_when_grown(store: RedisStore) -> None:
    b = Book(store, JOB_SPEC)
    command_id = b.send(CommandKind.GROW, {"op": "widen", "factor": 2})
    assert b.status(command_id)[0] == CommandStatus.IN_PROGRESS
    [request] = b.controller.requests
    assert request.id == command_id
    assert request.op is not None and request.op.factor == 2.0
    # What the request left unsaid comes from the job's widen config.
    assert request.op.init == b.spec.growth.widen.init

    decision = b.book.observe(lambda: b.controller.observe(_obs(50)))
    assert decision.request_id == command_id and decision.op is not None
    directive = b.book.directive(decision)
    assert directive.op == decision.op and directive.policy == "manual"
    assert not directive.pause and not directive.stop

    request_id = b.controller.on_growth(_grown(decision.op))
    b.book.grown(request_id, _grown(decision.op), 1)
    status, detail = b.status(command_id)
    assert (status, detail) == (CommandStatus.DONE, "grown to generation 1")
    assert b.controller.requests == ()


def test_a_refused_or_invalid_grow_command_is_rejected_with_the_reason(store: RedisStore) -> None:
    b = Book(store, {**JOB_SPEC, "growth": {"guards": {"max_generations": 0}}})
    invalid = b.send(CommandKind.GROW, {"op": "widen", "factor": -1})
    status, detail = b.status(invalid)
    assert status == CommandStatus.REJECTED and detail is not None
    assert detail.startswith("invalid growth:")
    assert b.controller.requests == ()

    refused = b.send(CommandKind.GROW, {"op": "deepen", "after": "1"})
    decision = b.book.observe(lambda: b.controller.observe(_obs(50)))
    assert decision.op is None and decision.request_id == refused
    status, detail = b.status(refused)
    assert status == CommandStatus.REJECTED
    assert detail == decision.reason and "max generations 0 reached" in detail
    assert b.book.directive(decision).op is None


def test_reconcile_requeues_commands_and_fails_the_growth_lost_with_the_workers(
    store: RedisStore,
) -> None:
    b = Book(store, JOB_SPEC)
    lost = b.send(CommandKind.GROW, {"op": "widen", "factor": 2})
    older_state = b.controller.state_dict()  # a checkpoint taken with `lost` still queued
    decision = b.book.observe(lambda: b.controller.observe(_obs(50)))
    assert decision.request_id == lost
    later = b.send(CommandKind.GROW, {"op": "deepen", "after": "1"})

    # The workers failed before the growth's checkpoint and resumed from an older one.
    b.controller.load_state_dict(older_state)
    b.book.reconcile({"step": 40, "generation": 0}, grown=False)
    assert [r.id for r in b.controller.requests] == [later]
    status, detail = b.status(lost)
    assert status == CommandStatus.FAILED and detail is not None
    assert "the checkpoint of step 40 (generation 0)" in detail
    assert b.status(later)[0] == CommandStatus.IN_PROGRESS


def test_a_lost_growth_found_in_the_checkpoint_is_done(store: RedisStore) -> None:
    b = Book(store, JOB_SPEC)
    command_id = b.send(CommandKind.GROW, {"op": "widen", "factor": 2})
    b.book.observe(lambda: b.controller.observe(_obs(50)))
    b.book.reconcile({"step": 50, "generation": 1, "param_count": 420}, grown=True)
    status, detail = b.status(command_id)
    assert status == CommandStatus.DONE and detail is not None
    assert detail.startswith("grown to generation 1 (the workers restarted")
    assert b.controller.requests == ()


def test_pause_resume_stop_and_the_end_of_the_job(store: RedisStore) -> None:
    b = Book(store, JOB_SPEC)
    pause = b.send(CommandKind.PAUSE)
    assert b.book.directive().pause
    b.book.resolve(CommandKind.PAUSE, "paused")
    assert b.status(pause) == (CommandStatus.DONE, "paused")
    resume = b.send(CommandKind.RESUME)
    grow = b.send(CommandKind.GROW)
    assert not b.book.directive().pause
    stop = b.send(CommandKind.STOP)
    assert b.book.directive().stop
    b.book.end("the job ended first")
    for command_id in (resume, grow):
        assert b.status(command_id) == (CommandStatus.REJECTED, "the job ended first")
    assert b.status(stop)[0] == CommandStatus.IN_PROGRESS
    # A command read twice (a re-delivered stream entry) is taken once.
    b.book.accept(grow, CommandKind.GROW, {})
    assert b.status(grow)[0] == CommandStatus.REJECTED


def test_resume_and_grow_wake_a_converged_loop_once(store: RedisStore) -> None:
    b = Book(store, JOB_SPEC)
    assert not b.book.directive().wake
    b.send(CommandKind.RESUME)
    assert b.book.directive().wake
    assert not b.book.directive().wake  # spent by the poll that carried it
    b.send(CommandKind.GROW)
    woken = b.book.directive()
    assert woken.wake and not woken.pause and woken.op is None  # the growth comes at a decision
    # The loop converged again before deciding: the queued grow and the resume in progress wake it.
    b.book.rewake()
    assert b.book.directive().wake
    b.book.observe(lambda: b.controller.observe(_obs(100)))  # the grow request is decided
    b.book.resolve(CommandKind.RESUME, "resumed")
    b.book.rewake()
    assert not b.book.directive().wake
