"""The controller: combines the policies any-of, applies the guards, plans the op, explains itself.

One controller per job. The worker (rank 0) or the supervisor calls :meth:`Controller.observe` with
every observation and applies the op of a growing :class:`~growth_policy.types.Decision`. The
controller learns that a growth was applied from the next observation's ``generation`` (or from
:meth:`Controller.notify_grown`), so cooldowns start at the growth actually applied. Its state is
JSON (:meth:`Controller.state_dict`) and goes into the job's checkpoint.

Order of an observation:

1. bookkeeping: a new generation ends the pending growth and starts the cooldown;
2. a growth still pending: wait (until ``apply_timeout_steps``, then count it as failed);
3. a manual request: the hard limits only (max generations, max params, memory);
4. the policies, any-of in the configured order; none fires: an idle decision;
5. the guards: max generations, warm-up (the first pass over the first data), minimum steps per
   generation, cooldown, optional gap; then the data rule: no growth on a training set that has
   not grown since the last growth unless the model plainly underfits it
   (``guards.regrow_on_same_data``; every growth's reason says how the rule was met);
6. the plan (what and where, by strategy), within max params, memory and the data cap;
7. when no policy wants growth, or the plan refuses it (size limits): shrink-and-perturb, if
   enabled and the data has grown enough since the last one. It changes no size and starts no
   cooldown; a growth that is wanted but waiting for a guard goes first.

A refusal is ``notable`` only when its state differs from the previous decision's, so the event
stream shows changes, not every observation.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from growth_policy._format import count, num, pct
from growth_policy._registry import get_policy
from growth_policy.config import GrowthPolicyConfig
from growth_policy.planning import Limits, Plan, check_op, plan_deepen, plan_widen
from growth_policy.policies import PolicyContext, Verdict, data_target, relative_gap
from growth_policy.shape import ModelShape, SummaryError, parse_summary
from growth_policy.types import Decision, GrowthOp, GrowthRequest, Observation

Numbers = dict[str, float | int | str]

STATE_VERSION = 2  # 2: requests and the pending growth carry request ids
# Generations that add no capacity the controller decided: shrink and perturb, and the head's
# growth for classes that arrive (the workers apply it on their own). No cooldown, not counted.
NOT_COUNTED = frozenset({"shrink_perturb", "add_classes"})
_READABLE_VERSIONS = (1, 2)

# Plan refusals after which the 'auto' strategy tries a deeper model instead of a wider one.
_WIDEN_BLOCKED = frozenset(
    {"max_width", "no_groups", "no_change", "max_params", "memory", "data_cap"}
)


def derive_seed(seed: int, generation: int) -> int:
    """The seed of the growth that creates ``generation``: stable across runs and platforms."""
    digest = hashlib.blake2b(f"{seed}:{generation}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**31


class Controller:
    """Decides when, where and how much to grow, and says why.

    ``Controller(config, seed=0)``; then ``observe(obs) -> Decision`` every few hundred samples,
    ``request(op, reason) -> id`` for manual growth (``requests``, ``drop_request``), the
    ``notify_*`` calls when the workers applied or failed a growth, ``state_dict()`` /
    ``load_state_dict()`` for checkpoints. Given the same observations and seed, the decisions are
    the same.
    """

    def __init__(
        self, config: GrowthPolicyConfig | Mapping[str, Any] | None = None, *, seed: int = 0
    ) -> None:
        if config is None:
            config = GrowthPolicyConfig()
        elif not isinstance(config, GrowthPolicyConfig):
            config = GrowthPolicyConfig.model_validate(config)
        self.config = config
        for name in self.config.policies:
            get_policy(name)  # a policy unregistered since the config was validated fails here
        self.seed = seed
        self._history: list[Observation] = []
        self._summary: dict[str, Any] | None = None
        self._summary_generation: int | None = None
        self._shape_cache: tuple[int, ModelShape | None, str | None] | None = None
        self._generation: int | None = None
        self._last_growth_step: int | None = None
        self._last_kind: str | None = None
        self._pending: dict[str, Any] | None = None
        self._requests: list[GrowthRequest] = []
        self._first_dataset_size: int | None = None
        self._last_key: str | None = None
        self._growths = 0
        self._failure: str | None = None
        self._sp_size: int | None = None  # dataset size at the last shrink-and-perturb
        self._grown_size: int | None = None  # training set size at the last growth applied

    # ------------------------------------------------------------------ public API

    @property
    def history(self) -> tuple[Observation, ...]:
        """The observations kept (oldest first, without their summaries)."""
        return tuple(self._history)

    @property
    def pending(self) -> GrowthOp | None:
        """The growth decided and not yet seen applied."""
        return None if self._pending is None else GrowthOp.model_validate(self._pending["op"])

    @property
    def pending_request(self) -> str | None:
        """The id of the request that the pending growth answers (None: none pending, or a
        growth that a policy decided)."""
        return None if self._pending is None else self._pending.get("request_id")

    @property
    def requests(self) -> tuple[GrowthRequest, ...]:
        """The manual requests queued and not yet decided, first to be decided first."""
        return tuple(self._requests)

    def request(
        self,
        op: GrowthOp | None = None,
        reason: str = "requested",
        *,
        request_id: str | None = None,
    ) -> str:
        """Queue a manual growth, decided at the next :meth:`observe`; returns the request's id
        (``request_id``, or a fresh one), which the decision that answers it carries.

        ``op=None`` lets the controller choose what and where by its strategy. Manual growth skips
        the policies, the warm-up, the minimum steps and the cooldown, and is refused only by the
        hard limits: max generations, max params, memory. Its seed is derived like any other.
        Requesting an id that is already queued, or whose growth is pending, changes nothing.
        """
        rid = uuid.uuid4().hex if request_id is None else request_id
        if rid != self.pending_request and all(r.id != rid for r in self._requests):
            self._requests.append(GrowthRequest(id=rid, op=op, reason=reason))
        return rid

    def drop_request(self, request_id: str) -> bool:
        """Take a queued request out of the queue; False when none has that id."""
        kept = [r for r in self._requests if r.id != request_id]
        dropped = len(kept) < len(self._requests)
        self._requests = kept
        return dropped

    def notify_grown(self, *, step: int, generation: int, op: GrowthOp | None = None) -> str | None:
        """The workers applied a growth at ``step``, creating ``generation``. Returns the id of
        the request the pending growth answered (None for a policy's growth, or none pending).

        Optional: the next observation's generation says the same, but this pins the cooldown to
        the exact step.
        """
        kind = op.op if op is not None else self._pending_kind()
        answered = self.pending_request
        if kind not in NOT_COUNTED and self._pending is not None:
            self._grown_size = self._pending.get("dataset_size", self._grown_size)
        self._pending = None
        self._generation = generation
        if kind in NOT_COUNTED:  # no new capacity decided here: no cooldown, no growth counted
            return answered
        self._last_growth_step = step
        self._last_kind = kind
        self._growths += 1
        return answered

    def on_growth(self, event: Any) -> str | None:
        """The workers' growth event (``workers.sources.GrowthEvent``, read by attribute):
        ``step``, ``generation_after`` and ``op``. Same as :meth:`notify_grown`."""
        return self.notify_grown(
            step=int(event.step),
            generation=int(event.generation_after),
            op=getattr(event, "op", None),
        )

    def notify_failed(self, *, step: int, error: str) -> str | None:
        """The workers could not apply the pending growth. The cooldown starts at ``step``, and
        the next decision reports the failure (notable). Returns the id of the request the
        failed growth answered (None for a policy's growth, or none pending)."""
        decided = None if self._pending is None else self._pending["step"]
        answered = self.pending_request
        self._pending = None
        self._last_growth_step = step
        self._failure = (
            f"the growth decided at step {decided} failed at step {step}: {error}; "
            f"cooling down for {self.config.guards.cooldown_steps} steps"
        )
        return answered

    def observe(self, obs: Observation) -> Decision:
        """Take one observation; answer with a decision (growth, refusal, or nothing to do)."""
        timeout = self._track(obs)
        if timeout is not None:
            return timeout
        waiting = self._waiting(obs)
        if waiting is not None:
            return waiting
        shape, shape_error = self._shape(obs)
        if self._requests:
            return self._manual(obs, shape, self._requests.pop(0))
        return self._automatic(obs, shape, shape_error)

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: cooldown, pending growth, requests, bounded history."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "generation": self._generation,
            "last_growth_step": self._last_growth_step,
            "last_kind": self._last_kind,
            "pending": self._pending,
            "requests": [r.model_dump(mode="json") for r in self._requests],
            "first_dataset_size": self._first_dataset_size,
            "last_key": self._last_key,
            "growths": self._growths,
            "failure": self._failure,
            "shrink_perturb_size": self._sp_size,
            "grown_dataset_size": self._grown_size,
            "summary": self._summary,
            "summary_generation": self._summary_generation,
            "history": [o.model_dump(mode="json") for o in self._history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the config comes from the job spec, not from here)."""
        version = state.get("version")
        if version not in _READABLE_VERSIONS:
            raise ValueError(
                f"controller state version {version!r}; this code reads "
                f"{', '.join(map(str, _READABLE_VERSIONS))}"
            )
        pending = state.get("pending")
        if pending is not None:
            GrowthOp.model_validate(pending["op"])
        # Version 1 had no request ids: such a request gets a fresh one.
        requests = [
            GrowthRequest.model_validate({"id": uuid.uuid4().hex, **r})
            for r in state.get("requests", [])
        ]
        history = [Observation.model_validate(o) for o in state.get("history", [])]
        self.seed = int(state["seed"])
        self._generation = state.get("generation")
        self._last_growth_step = state.get("last_growth_step")
        self._last_kind = state.get("last_kind")
        self._pending = None if pending is None else dict(pending)
        self._requests = requests
        self._first_dataset_size = state.get("first_dataset_size")
        self._last_key = state.get("last_key")
        self._growths = int(state.get("growths", 0))
        self._failure = state.get("failure")
        self._sp_size = state.get("shrink_perturb_size")
        self._grown_size = state.get("grown_dataset_size")
        self._summary = state.get("summary")
        self._summary_generation = state.get("summary_generation")
        self._shape_cache = None
        self._history = history[-self.config.history_size :]

    # ------------------------------------------------------------------ internals

    def _pending_kind(self) -> str | None:
        return None if self._pending is None else str(self._pending["op"]["op"])

    def _waiting(self, obs: Observation) -> Decision | None:
        """The failure of the last growth, to report once; or the growth still pending."""
        if self._failure is not None:
            failure, self._failure = self._failure, None
            return self._decide(
                obs, None, "controller", failure, {}, key="growth_failed", notable=True, always=True
            )
        if self._pending is not None:
            return self._decide(
                obs,
                None,
                "controller",
                f"waiting for the growth decided at step {self._pending['step']} to be applied",
                {"pending_step": self._pending["step"]},
                key="pending",
                notable=False,
            )
        return None

    def _automatic(
        self, obs: Observation, shape: ModelShape | None, shape_error: str | None
    ) -> Decision:
        """Steps 4 to 7 of the module docstring: policies, guards, plan, shrink-and-perturb."""
        ctx = PolicyContext(obs, (*self._history[:-1], obs), self.config)
        verdicts = [self._run_policy(name, ctx) for name in self.config.policies]
        firing = next((v for v in verdicts if v.grow), None)
        shrink_perturb = self._shrink_perturb_due(obs)
        if firing is None:
            return self._shrink_perturb(obs) if shrink_perturb else self._idle(obs, verdicts)
        guard = self._time_guard(obs)
        if guard is not None:
            # A growth is wanted but must wait (warm-up, cooldown, ...): shrink-and-perturb waits
            # too, so that it follows the growth, as measured (docs/learning.md).
            return self._wanted_but_refused(obs, firing, *guard)
        allowed, data_note, data_numbers = self._data_rule(obs, ctx, firing)
        plan = (
            self._plan(
                obs, shape, self._limits(obs), target=firing.target_params,
                signals=obs.group_signals,
            )
            if allowed
            else Plan(None, "same_data", data_note, obs.param_count, obs.param_count, data_numbers)
        )  # fmt: skip
        if plan.op is None:
            if shrink_perturb:
                return self._shrink_perturb(obs)
            return self._wanted_but_refused(obs, firing, plan.state, plan.description, plan.numbers)
        note = f" (model summary unreadable: {shape_error})" if shape_error else ""
        reason = f"{firing.reason}: {plan.description}{note}; {data_note}"
        return self._grow(obs, plan, firing.policy, reason, {**firing.numbers, **data_numbers})

    def _data_rule(
        self, obs: Observation, ctx: PolicyContext, firing: Verdict
    ) -> tuple[bool, str, Numbers]:
        """Whether a policy may grow on this data (``guards.regrow_on_same_data``), and why.

        The rule: no growth on a training set that has not grown since the last growth, unless
        the model plainly underfits it (the plateau test passes: the training loss has stopped
        improving with a small generalisation gap). The answer is quoted in the decision.
        """
        last, size = self._grown_size, obs.dataset_size
        numbers: Numbers = {"dataset_size": size}
        if last is None:
            return True, "data: no growth before on this job's data", numbers
        numbers["grown_dataset_size"] = last
        if size > last:
            return (
                True,
                f"data: {count(last)} → {count(size)} {obs.data_unit} since the last growth",
                numbers,
            )
        rule = self.config.guards.regrow_on_same_data
        same = (
            f"the training set has not grown since the last growth ({count(size)} {obs.data_unit})"
        )
        if rule == "always":
            return True, f"data: {same}; regrow_on_same_data='always'", numbers
        under = firing if firing.policy == "plateau" else self._run_policy("plateau", ctx)
        if rule == "underfitting" and under.grow:
            return True, f"data: {same}, but the model underfits it ({under.reason})", numbers
        why = (
            "regrow_on_same_data='never'"
            if rule == "never"
            else (f"not plainly underfitting: {under.reason}")
        )
        return False, f"{same}: no growth on the same data ({why})", numbers

    def _wanted_but_refused(
        self, obs: Observation, firing: Verdict, state: str, text: str, numbers: Numbers
    ) -> Decision:
        """A policy wants growth and a guard or a limit refuses it: notable, with both reasons."""
        return self._decide(
            obs,
            None,
            state,
            f"{text}; {firing.policy} would grow: {firing.reason}",
            {**firing.numbers, **numbers},
            key=f"refused:{state}",
            notable=True,
        )

    def _track(self, obs: Observation) -> Decision | None:
        """Bookkeeping; returns a decision only when a pending growth timed out."""
        if self._generation is None:
            self._generation = obs.generation
        elif obs.generation > self._generation:
            grown_at = obs.step - obs.generation_step
            if self._pending_kind() != "shrink_perturb":
                if self._pending is not None:
                    self._grown_size = self._pending.get("dataset_size", self._grown_size)
                if self._last_growth_step is None or grown_at > self._last_growth_step:
                    self._last_growth_step = grown_at
                self._last_kind = self._pending_kind() or self._last_kind
                self._growths += obs.generation - self._generation
            self._pending = None
            self._generation = obs.generation
        elif obs.generation < self._generation:  # resumed from an older checkpoint
            self._generation = obs.generation
            self._pending = None
        if self._first_dataset_size is None and obs.dataset_size > 0:
            self._first_dataset_size = obs.dataset_size
        if obs.summary is not None:
            self._summary = obs.summary
            self._summary_generation = obs.generation
            self._shape_cache = None
        # Steps can go back when the job resumes from a checkpoint: forget what came after.
        self._history = [o for o in self._history if o.step < obs.step]
        self._history.append(
            obs.model_copy(
                update={"summary": None, "group_signals": {}, "compute": {}, "slices": {}}
            )
        )
        del self._history[: -self.config.history_size]

        if (
            self._pending is not None
            and obs.step - self._pending["step"] >= self.config.guards.apply_timeout_steps
        ):
            decided = self._pending["step"]
            self._pending = None
            self._last_growth_step = obs.step
            return self._decide(
                obs,
                None,
                "controller",
                f"the growth decided at step {decided} was not applied within "
                f"{self.config.guards.apply_timeout_steps} steps (generation still {obs.generation}): "
                f"counted as failed, cooling down for {self.config.guards.cooldown_steps} steps",
                {"pending_step": decided},
                key="apply_timeout",
                notable=True,
            )
        return None

    def _shape(self, obs: Observation) -> tuple[ModelShape | None, str | None]:
        """The current generation's shape from its summary (cached); None when unknown."""
        if self._summary is None or self._summary_generation != obs.generation:
            return None, None
        if self._shape_cache is None or self._shape_cache[0] != obs.generation:
            try:
                self._shape_cache = (obs.generation, parse_summary(self._summary), None)
            except SummaryError as e:
                self._shape_cache = (obs.generation, None, str(e))
        return self._shape_cache[1], self._shape_cache[2]

    def _run_policy(self, name: str, ctx: PolicyContext) -> Verdict:
        try:
            return get_policy(name)(ctx)
        except Exception as e:  # a user policy's bug must not stop training; it is reported
            return Verdict(
                name, False, "error", f"policy {name} failed: {type(e).__name__}: {e}", notable=True
            )

    def _limits(self, obs: Observation) -> Limits:
        cap = None
        over = self.config.guards.max_params_over_target
        if over is not None and "data_scaling" in self.config.policies and obs.dataset_size > 0:
            cap = int(over * data_target(self.config, obs.dataset_size, obs.data_unit))
        return Limits.from_config(self.config, cap_params=cap)

    def _time_guard(self, obs: Observation) -> tuple[str, str, Numbers] | None:
        g = self.config.guards
        if obs.generation >= g.max_generations:
            return (
                "max_generations",
                f"max generations {g.max_generations} reached",
                {"max_generations": g.max_generations},
            )
        first = self._first_dataset_size or obs.dataset_size
        need = int(g.warmup_passes * first)
        if obs.samples_seen < need:
            return (
                "warmup",
                f"warm-up: {obs.samples_seen:,} of {need:,} {obs.data_unit} seen "
                f"({g.warmup_passes:g} pass over the first {first:,} {obs.data_unit})",
                {"samples_seen": obs.samples_seen, "warmup_samples": need},
            )
        if obs.generation_step < g.min_generation_steps:
            return (
                "min_generation_steps",
                f"generation {obs.generation} has trained {obs.generation_step} of "
                f"{g.min_generation_steps} steps",
                {
                    "generation_step": obs.generation_step,
                    "min_generation_steps": g.min_generation_steps,
                },
            )
        last = self._last_growth_step
        if last is None and obs.generation > 0:
            last = obs.step - obs.generation_step
        if last is not None and obs.step - last < g.cooldown_steps:
            return (
                "cooldown",
                f"cooldown: {obs.step - last} of {g.cooldown_steps} steps since the growth at step {last}",
                {"steps_since_growth": obs.step - last, "cooldown_steps": g.cooldown_steps},
            )
        if g.max_gap is not None and obs.val_loss is not None:
            gap = relative_gap(obs.train_loss, obs.val_loss)
            if gap > g.max_gap:
                return (
                    "overfitting",
                    f"overfitting: gap {pct(gap)} > {pct(g.max_gap)}: waiting for data",
                    {"gap": gap, "max_gap": g.max_gap},
                )
        return None

    def _shrink_perturb_due(self, obs: Observation) -> bool:
        """Enabled, some automatic policy configured (not ``["manual"]`` alone), past the
        warm-up, below max generations, and the data grew enough since the last
        shrink-and-perturb (or the first data)."""
        cfg = self.config.shrink_perturb
        if not cfg.enabled or obs.dataset_size == 0 or self.config.policies == ["manual"]:
            return False  # manual only: nothing happens by itself
        base = self._sp_size or self._first_dataset_size or obs.dataset_size
        g = self.config.guards
        first = self._first_dataset_size or obs.dataset_size
        return (
            obs.dataset_size >= (1.0 + cfg.min_data_growth) * base
            and obs.generation < g.max_generations
            and obs.samples_seen >= int(g.warmup_passes * first)
        )

    def _shrink_perturb(self, obs: Observation) -> Decision:
        """The shrink-and-perturb decision (call when :meth:`_shrink_perturb_due`)."""
        cfg = self.config.shrink_perturb
        base = self._sp_size or self._first_dataset_size or obs.dataset_size
        since = "the last shrink-and-perturb" if self._sp_size else "the first data"
        self._sp_size = obs.dataset_size
        op = GrowthOp(op="shrink_perturb", shrink=cfg.shrink, perturb=cfg.perturb)
        p = obs.param_count
        numbers: Numbers = {
            "params_before": p,
            "params_after": p,
            "dataset_size": obs.dataset_size,
            "since_size": base,
            "shrink": cfg.shrink,
            "perturb": cfg.perturb,
        }
        plan = Plan(op, "shrink_perturb", "", p, p, numbers)
        reason = (
            f"the data grew ×{num(obs.dataset_size / base)} since {since} "
            f"({count(base)} → {count(obs.dataset_size)} {obs.data_unit}, "
            f">= ×{num(1 + cfg.min_data_growth)}):"
            f" shrink and perturb, θ ← {num(cfg.shrink)}·θ + {num(cfg.perturb)}·ε"
        )
        return self._grow(obs, plan, "shrink_perturb", reason, {})

    def _plan(
        self,
        obs: Observation,
        shape: ModelShape | None,
        limits: Limits,
        *,
        target: int | None,
        signals: Mapping[str, Mapping[str, float]],
    ) -> Plan:
        strategy = self.config.strategy
        if strategy == "alternate":
            strategy = "deepen" if self._last_kind == "widen" else "widen"
        if strategy == "deepen":
            return plan_deepen(obs, shape, self.config, limits)
        widen = plan_widen(obs, shape, self.config, limits, target_params=target, signals=signals)
        if strategy == "auto" and widen.op is None and widen.state in _WIDEN_BLOCKED:
            deepen = plan_deepen(obs, shape, self.config, limits)
            if deepen.op is not None:
                return Plan(
                    deepen.op,
                    deepen.state,
                    f"{deepen.description} (cannot widen: {widen.description})",
                    deepen.params_before,
                    deepen.params_after,
                    {**deepen.numbers, "widen_refused": widen.state},
                )
        return widen

    def _manual(self, obs: Observation, shape: ModelShape | None, req: GrowthRequest) -> Decision:
        why = req.reason
        g = self.config.guards
        if obs.generation >= g.max_generations:
            text = f"max generations {g.max_generations} reached"
            return self._decide(
                obs,
                None,
                "manual",
                f"manual request ({why}) refused: {text}",
                {"max_generations": g.max_generations},
                key="manual_refused",
                notable=True,
                always=True,
                request_id=req.id,
            )
        hard = Limits.from_config(self.config)
        if req.op is None:
            plan = self._plan(obs, shape, hard, target=None, signals=obs.group_signals)
        else:
            plan = check_op(obs, shape, req.op, self.config, hard)
        if plan.op is None:
            return self._decide(
                obs,
                None,
                "manual",
                f"manual request ({why}) refused: {plan.description}",
                plan.numbers,
                key="manual_refused",
                notable=True,
                always=True,
                request_id=req.id,
            )
        reason = f"manual request ({why}): {plan.description}"
        return self._grow(obs, plan, "manual", reason, {}, request_id=req.id)

    def _grow(
        self,
        obs: Observation,
        plan: Plan,
        policy: str,
        reason: str,
        numbers: Numbers,
        *,
        request_id: str | None = None,
    ) -> Decision:
        assert plan.op is not None
        op = plan.op.model_copy(update={"seed": derive_seed(self.seed, obs.generation + 1)})
        self._pending = {
            "op": op.model_dump(mode="json"),
            "step": obs.step,
            "generation": obs.generation,
            "policy": policy,
            "request_id": request_id,
            "dataset_size": obs.dataset_size,
        }
        numbers = {**numbers, **plan.numbers}
        return self._decide(
            obs, op, policy, reason, numbers, key="grow", notable=True, request_id=request_id
        )

    def _idle(self, obs: Observation, verdicts: Sequence[Verdict]) -> Decision:
        numbers: Numbers = {}
        for v in verdicts:
            numbers.update({f"{v.policy}.{k}": x for k, x in v.numbers.items()})
        notable = [v for v in verdicts if v.notable]
        policy = notable[0].policy if notable else "+".join(v.policy for v in verdicts)
        key = "idle:" + ",".join(f"{v.policy}={v.state}" for v in verdicts)
        reason = "; ".join(v.reason for v in verdicts)
        return self._decide(obs, None, policy, reason, numbers, key=key, notable=bool(notable))

    def _decide(
        self,
        obs: Observation,
        op: GrowthOp | None,
        policy: str,
        reason: str,
        numbers: Numbers,
        *,
        key: str,
        notable: bool,
        always: bool = False,
        request_id: str | None = None,
    ) -> Decision:
        """The decision; a refusal is notable only when its state changed (or ``always``)."""
        changed = key != self._last_key or always
        self._last_key = key
        numbers = {**numbers, "state": key, "param_count": obs.param_count}
        return Decision(
            step=obs.step,
            op=op,
            policy=policy,
            reason=reason,
            numbers=numbers,
            notable=op is not None or (notable and changed),
            request_id=request_id,
        )
