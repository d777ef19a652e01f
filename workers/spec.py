"""Validated specs for what the workers build and train: the task, the model, the optimizer.

These are the pieces of a job spec that the workers need; the service embeds them in its ``JobSpec``.
Every model is ``extra="forbid"`` so that an unknown key is an error, not a silent default.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_INPUT_ELEMENTS = 1 << 20


Tokenizer = Literal["bytes", "ids"]
BYTES_VOCAB = 256
MAX_VOCAB = 1_000_000
MAX_CONTEXT = 8192


class TaskSpec(BaseModel):
    """What is learned: the per-sample input shape and the target.

    ``language_modeling`` learns the next token of a token stream: its samples are windows of
    ``context_length`` token ids (``input_shape`` is ``(context_length,)`` implicitly), its output
    is a distribution over the vocabulary (256 UTF-8 byte values for the ``bytes`` tokenizer,
    ``vocab_size`` ids for ``ids``), and its metric is the perplexity (lower is better).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["classification", "regression", "language_modeling"] = "classification"
    input_shape: tuple[int, ...] = Field(
        min_length=1,
        max_length=4,
        description="Per-sample shape: (features,), (C, L) or (C, H, W). Not given for "
        "language_modeling: it is (context_length,).",
    )
    num_classes: int | None = Field(default=None, ge=2, le=1_000_000)
    num_outputs: int | None = Field(default=None, ge=1, le=1_000_000)
    max_classes: int | None = Field(
        default=None,
        ge=2,
        le=1_000_000,
        description="classification: the classes are open up to this many; the head starts at "
        "num_classes and grows (growth op 'add_classes') when a label at or beyond it arrives.",
    )
    class_names: tuple[str, ...] | None = Field(
        default=None,
        max_length=1_000_000,
        description="classification: the name of class i at position i (at most max_classes, "
        "or num_classes); predict returns them.",
    )
    tokenizer: Tokenizer = Field(
        default="bytes",
        description="language_modeling: 'bytes' (UTF-8 bytes, 256 ids) or 'ids' (the user's own "
        "token ids, below vocab_size).",
    )
    vocab_size: int | None = Field(
        default=None,
        ge=2,
        le=MAX_VOCAB,
        description="language_modeling: required for tokenizer 'ids'; 256 or absent for 'bytes'.",
    )
    context_length: int = Field(
        default=256, ge=2, le=MAX_CONTEXT, description="language_modeling: tokens per window."
    )

    @model_validator(mode="before")
    @classmethod
    def _implicit_input_shape(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "language_modeling":
            context = data.get("context_length", 256)
            if "input_shape" not in data or data["input_shape"] is None:
                data = {**data, "input_shape": (context,) if isinstance(context, int) else (1,)}
            elif isinstance(context, int) and list(data["input_shape"]) != [context]:
                raise ValueError(
                    f"language_modeling takes no input_shape (it is [context_length] = "
                    f"[{context}]); got {list(data['input_shape'])}"
                )
        return data

    @model_validator(mode="after")
    def _target_fits_kind(self) -> Self:
        errors = []
        if any(d < 1 for d in self.input_shape):
            errors.append(f"input_shape {list(self.input_shape)} has a dimension below 1")
        elements = 1
        for d in self.input_shape:
            elements *= d
        if elements > MAX_INPUT_ELEMENTS:
            errors.append(
                f"input_shape has {elements} elements per sample (max {MAX_INPUT_ELEMENTS})"
            )
        if self.kind == "classification":
            if self.num_classes is None:
                errors.append("classification needs 'num_classes' (at least 2)")
            if self.num_outputs is not None:
                errors.append("'num_outputs' is for regression; classification uses 'num_classes'")
        elif self.kind == "regression":
            if self.num_outputs is None:
                errors.append("regression needs 'num_outputs' (at least 1)")
            if self.num_classes is not None:
                errors.append("'num_classes' is for classification; regression uses 'num_outputs'")
        errors += self._language_modeling_errors()
        errors += self._open_class_errors()
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def _open_class_errors(self) -> list[str]:
        if self.kind != "classification":
            return [
                f"'{name}' is for classification, not {self.kind}"
                for name in ("max_classes", "class_names")
                if getattr(self, name) is not None
            ]
        errors = []
        if self.num_classes and self.max_classes and self.max_classes < self.num_classes:
            errors.append(
                f"max_classes ({self.max_classes}) must be at least num_classes "
                f"({self.num_classes}), the head's starting size"
            )
        names = self.class_names
        if names is not None:
            if len(names) > self.class_capacity:
                errors.append(
                    f"class_names has {len(names)} names, more than the "
                    f"{self.class_capacity} classes (max_classes, else num_classes)"
                )
            if any(not n or len(n) > 200 for n in names):
                errors.append("class_names must each be 1 to 200 characters")
            if len(set(names)) != len(names):
                errors.append("class_names must be distinct")
        return errors

    @property
    def class_capacity(self) -> int:
        """Classification: how many classes the job may ever have (max_classes, else
        num_classes)."""
        return self.max_classes or self.num_classes or 0

    def class_name(self, index: int) -> str | None:
        """The name of class ``index`` where ``class_names`` gives one."""
        names = self.class_names or ()
        return names[index] if 0 <= index < len(names) else None

    def _language_modeling_errors(self) -> list[str]:
        if self.kind != "language_modeling":
            # compared with the defaults, not the fields set, so that a dump validates again
            return [
                f"'{name}' is for language_modeling, not {self.kind}"
                for name in ("tokenizer", "vocab_size", "context_length")
                if getattr(self, name) != type(self).model_fields[name].default
            ]
        errors = []
        for name in ("num_classes", "num_outputs"):
            if getattr(self, name) is not None:
                errors.append(
                    f"'{name}' is not used by language_modeling: the outputs are the vocabulary "
                    f"(tokenizer 'bytes': 256 ids; 'ids': vocab_size)"
                )
        if self.tokenizer == "ids" and self.vocab_size is None:
            errors.append("tokenizer 'ids' needs 'vocab_size' (2 to 1,000,000)")
        if self.tokenizer == "bytes" and self.vocab_size not in (None, BYTES_VOCAB):
            errors.append(
                f"tokenizer 'bytes' has {BYTES_VOCAB} ids, so vocab_size must be absent or "
                f"{BYTES_VOCAB}, not {self.vocab_size}; use tokenizer 'ids' for another vocabulary"
            )
        return errors

    @property
    def vocab(self) -> int:
        """The vocabulary size of a language-modelling task (256 for the ``bytes`` tokenizer)."""
        if self.tokenizer == "bytes":
            return BYTES_VOCAB
        assert self.vocab_size is not None
        return self.vocab_size

    @property
    def output_dim(self) -> int:
        if self.kind == "language_modeling":
            return self.vocab
        out = self.num_classes if self.kind == "classification" else self.num_outputs
        assert out is not None
        return out

    @property
    def sample_elements(self) -> int:
        n = 1
        for d in self.input_shape:
            n *= d
        return n

    @property
    def metric_name(self) -> str:
        return {"classification": "accuracy", "regression": "mse"}.get(self.kind, "perplexity")

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger metric is better: True for accuracy only (mse and perplexity fall)."""
        return self.kind == "classification"


class ModelSpec(BaseModel):
    """A model family and its options, e.g. ``{"family": "mlp", "hidden": [64, 64]}``.

    The options are validated by the family's own options model (see ``workers.models``), which is
    where unknown keys are refused; families come only from the built-in registry or from installed
    ``lifelong.models`` entry points, never from code in a request.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    family: str = Field(min_length=1, max_length=64, examples=["mlp", "cnn", "resnet"])

    def options(self) -> dict[str, Any]:
        """The family-specific options (every key but ``family``)."""
        return dict(self.model_extra or {})


ScheduleKind = Literal["constant", "cosine", "wsd", "rewarm"]
LM_WARMUP_STEPS = 100


class ScheduleSpec(BaseModel):
    """The learning rate at each optimizer step (``workers.recipe.learning_rate``).

    Every schedule starts with a linear warm-up over ``warmup_steps`` (the rate at step s, counted
    from 0, is ``lr × (s + 1) / (warmup_steps + 1)``, as nanoGPT's). Then:

    * ``constant``: ``lr``;
    * ``cosine``: from ``lr`` down to ``min_lr`` along a half cosine, reached at step
      ``decay_steps`` (counted from the job's first step, as nanoGPT's ``lr_decay_iters``), then
      ``min_lr``;
    * ``wsd`` (warmup-stable-decay): ``lr``, and a linear decay to ``min_lr`` over the last
      ``decay_steps`` steps before a step budget ends (``compute.budget_per_version.steps``: the
      weights a data version leaves, the ones released, are decayed; and
      ``compute.budget_total.steps``); constant where no step budget is set;
    * ``rewarm``: ``lr``, and after each growth a short warm-up again over ``rewarm_steps``.

    The steps are the loop's counters (step, generation step, steps on the data version), which
    checkpoints keep: the rate survives growth and resume.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ScheduleKind = Field(
        default="constant",
        description="The schedule after the warm-up. 'constant' is the default: on the "
        "Shakespeare stream (bench/lm_stream.py, docs/benchmarks.md, its schedules table, one "
        "seed) wsd (decaying over the last fifth of every stage) averaged 0.012 nats lower over "
        "the stages and rewarm 0.034 nats higher; wsd decays only before a known end, so it needs "
        "a step budget and decay_steps that a never-ending stream does not have, and cosine needs "
        "the stream's end.",
    )
    warmup_steps: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description=f"Linear warm-up at the start. None: {LM_WARMUP_STEPS} for language_modeling, "
        "0 for the other tasks.",
    )
    min_lr: float = Field(default=0.0, ge=0.0, le=10.0, description="cosine and wsd: the floor.")
    decay_steps: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="cosine: the step at which min_lr is reached; wsd: the decay's length.",
    )
    rewarm_steps: int = Field(
        default=100, ge=1, le=1_000_000, description="rewarm: the warm-up after each growth."
    )

    @model_validator(mode="after")
    def _decay_fits_kind(self) -> Self:
        if self.kind in ("cosine", "wsd") and self.decay_steps is None:
            raise ValueError(f"schedule '{self.kind}' needs 'decay_steps'")
        if self.kind == "cosine" and self.decay_steps is not None:
            warmup = self.warmup_steps or 0
            if self.decay_steps <= warmup:
                raise ValueError(
                    f"schedule 'cosine' decays until step decay_steps ({self.decay_steps}), "
                    f"which must come after the warm-up ({warmup} steps)"
                )
        return self


class OptimizerSpec(BaseModel):
    """The optimizer and the training recipe: schedule, clipping, accumulation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    decay: Literal["matrices", "all"] = Field(
        default="matrices",
        description="Which parameters weight_decay applies to: 'matrices' (weights of 2 or more "
        "dims: linear, conv and embedding weights; not biases, norm gains or other vectors) or "
        "'all'.",
    )
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="sgd only")
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    clip_grad_norm: float | None = Field(
        default=None,
        gt=0.0,
        le=1e6,
        description="Clip the gradients' global L2 norm to this before each step (None: no "
        "clipping).",
    )
    accumulation_steps: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Micro-batches (of batch_size each) whose gradients are summed into one "
        "optimizer step.",
    )

    @model_validator(mode="after")
    def _betas_in_range(self) -> Self:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas {list(self.betas)} must each be in [0, 1)")
        if self.schedule.min_lr > self.lr:
            raise ValueError(
                f"schedule.min_lr ({self.schedule.min_lr}) must not exceed lr ({self.lr})"
            )
        return self


class BudgetSpec(BaseModel):
    """Compute limits; each one unset (None) is no limit. Busy seconds count training time only
    (not the time spent waiting for data, converged or paused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int | None = Field(default=None, ge=1, description="Optimizer steps.")
    samples: int | None = Field(default=None, ge=1, description="Training samples consumed.")
    flops: float | None = Field(
        default=None, gt=0, description="Estimated FLOPs (training and validation)."
    )
    seconds: float | None = Field(
        default=None, gt=0, description="Busy wall-clock seconds (training, not waiting)."
    )

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.steps, self.samples, self.flops, self.seconds))


WakeFrom = Literal["best", "last"]
PatienceUnit = Literal["observations", "samples"]


class ComputeSpec(BaseModel):
    """When a job stops spending compute: convergence on the data it has, and budgets.

    A job has converged on its data when its validation loss has not improved by more than
    ``min_improvement`` (relative to the best) for ``patience`` observations (or samples seen),
    and no new data has arrived since the best. With ``idle_when_converged`` it then waits, using
    no compute, until new data arrives (or a resume or grow command), and trains on from the best
    weights or the last ones (``wake_from``). See docs/workers.md, "Converged: compute that
    follows the data".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    idle_when_converged: bool = Field(
        default=True, description="False: train without end on the data it has (no idling)."
    )
    patience: int = Field(
        default=10,
        ge=1,
        description="How long without a validation improvement counts as converged, in "
        "'patience_unit's.",
    )
    patience_unit: PatienceUnit = Field(
        default="observations",
        description="'observations' (one every observe_every steps) or 'samples' seen.",
    )
    min_improvement: float = Field(
        default=0.002,
        ge=0.0,
        lt=1.0,
        description="A validation loss below best × (1 - min_improvement) is an improvement.",
    )
    wake_from: WakeFrom = Field(
        default="last",
        description="The weights a converged job holds and trains on from: 'last', or 'best' "
        "(those of the best validation loss since the data last changed, with their optimizer "
        "state; a copy of both is kept). Measured on the clock-driven MNIST-1D stream "
        "(bench/idle.py, docs/benchmarks.md): 'last' ended 0.4 points higher and averaged 0.7 "
        "points higher over the stages, without the copy.",
    )
    budget_per_version: BudgetSpec = Field(
        default_factory=BudgetSpec,
        description="Limits per data version: when spent, the job waits for new data, as when "
        "converged.",
    )
    budget_total: BudgetSpec = Field(
        default_factory=BudgetSpec,
        description="Limits over the job's life: when spent, the job stops.",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="The forward pass's precision (workers.device): 'auto' is bf16 autocast on a "
        "GPU and fp32 elsewhere; 'bf16' and 'fp32' force it. Weights, gradients and optimizer "
        "state stay fp32.",
    )


ReplayHistory = Literal["uniform", "recency", "class_balanced"]


class ReplaySpec(BaseModel):
    """What each training batch holds: a share of the newest data, and replay of the history.

    Every batch of ``batch_size`` samples (per rank) holds ``round(newest_share × batch_size)``
    samples of the **newest** data and the rest drawn from the **history** (every training sample
    pushed so far, the newest included), as ``history`` says:

    * ``uniform``: every sample equally likely (a shuffled order, all of it before any repeats);
    * ``recency``: a sample's weight halves for every ``half_life`` training samples that arrived
      after it;
    * ``class_balanced`` (classification): a reservoir of ``reservoir_size`` samples per rank that
      keeps the classes as balanced as the data allows (class-balanced reservoir sampling: a sample
      of a class among the largest in the reservoir replaces one of its own class with the
      probability reservoir count / seen count; any other replaces one of a largest class).

    The **newest** data of a rank are the last ``newest_window`` training samples to arrive at it;
    those not yet trained on are taken first (in the order they arrived), the rest of the share is
    drawn uniformly from the window. So a pushed sample is in a batch at the first step of the
    first pass after its push is in the manifest, if the push holds fewer samples than the share
    per batch, and within ``ceil(push / share)`` steps otherwise.

    A pass lasts at most ``max_steps_per_pass`` steps; the loop reads the manifest between passes,
    so a push waits at most one pass, whatever the history's size.

    The default (``uniform``, ``newest_share`` 0.5, ``max_steps_per_pass`` 100) was measured on
    the freshness benchmark (``python -m bench.freshness``, section "Freshness" of
    ``docs/benchmarks.md``), against uniform replay with no newest share and against passes of
    1,000 steps, at 10 thousand and 10 million samples of history: with no newest share a pushed
    sample waits for uniform replay to draw it, a wait that grows with the history (at 10 million
    samples no push was trained on within the benchmark's limit); with the share it is in the
    first batch of the next pass, so the wait is at most one pass, which a longer pass makes
    longer once the history outgrows it (the benchmark's table gives the seconds).
    Half of every batch still replays the history, experience replay's usual 50/50.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    history: ReplayHistory = Field(
        default="uniform", description="'uniform', 'recency' (half_life) or 'class_balanced'."
    )
    half_life: float | None = Field(
        default=None,
        gt=0,
        description="recency: training samples (arrived after a sample) that halve its weight.",
    )
    newest_share: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Share of every batch drawn from the newest data (0: replay only; 1: the "
        "newest data only, fine-tuning).",
    )
    newest_window: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="Per rank: how many of the last training samples to arrive are the newest.",
    )
    reservoir_size: int = Field(
        default=4096,
        ge=2,
        le=10_000_000,
        description="class_balanced: samples per rank in the class-balanced reservoir.",
    )
    max_steps_per_pass: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Steps per pass at most; the manifest is read between passes.",
    )

    @model_validator(mode="after")
    def _options_fit_history(self) -> Self:
        if self.history == "recency" and self.half_life is None:
            raise ValueError("replay 'recency' needs 'half_life' (training samples, above 0)")
        if self.history != "recency" and self.half_life is not None:
            raise ValueError(f"'half_life' is for replay 'recency', not '{self.history}'")
        return self


DEFAULT_RESIDENT_BYTES = 1 << 30


class DataSpec(BaseModel):
    """How much of a job's data a rank keeps in memory.

    ``resident_bytes`` bounds, per rank, the decoded training samples held in memory (features and
    labels, as float32 and int64 or float32 tensors): the history while it fits, the newest
    window, the class-balanced reservoir, and the streamed windows once it does not. Beyond it the
    rank streams its share of the shards from the storage root in a shuffled order, two windows at
    a time (one trained on, one read ahead). The validation set (rank 0) is bounded apart, by
    ``val_max_samples``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    resident_bytes: int = Field(
        default=DEFAULT_RESIDENT_BYTES,
        ge=1 << 16,
        le=1 << 40,
        description="Per rank, bytes of decoded training samples held in memory (1 GiB).",
    )


def replay_problems(task: TaskSpec, replay: ReplaySpec, data: DataSpec) -> list[str]:
    """What in ``replay`` and ``data`` does not fit ``task`` (empty when they fit)."""
    problems = []
    if replay.history == "class_balanced" and task.kind != "classification":
        problems.append(f"replay 'class_balanced' is for classification, not {task.kind}")
    if task.kind == "language_modeling":
        return problems + _token_budget_problems(task, replay, data)
    label_bytes = 8 if task.kind != "regression" else 4 * (task.num_outputs or 1)
    sample = 4 * task.sample_elements + label_bytes
    reserved = replay.newest_window * sample if replay.newest_share > 0 else 0
    if replay.history == "class_balanced":
        reserved += replay.reservoir_size * sample
    if data.resident_bytes - reserved < 2 * sample:
        problems.append(
            f"data.resident_bytes ({data.resident_bytes:,}) leaves no room to stream after the "
            f"newest window and the reservoir ({reserved:,} bytes at {sample:,} bytes a sample); "
            "raise data.resident_bytes or lower replay.newest_window or replay.reservoir_size"
        )
    return problems


def token_itemsize(vocab: int) -> int:
    """Bytes a resident token takes: the smallest integer type that holds every id below
    ``vocab`` (one byte for the byte tokenizer, two below 32,768 ids, four otherwise)."""
    return 1 if vocab <= 256 else 2 if vocab <= 1 << 15 else 4


def _token_budget_problems(task: TaskSpec, replay: ReplaySpec, data: DataSpec) -> list[str]:
    """A language model's budget, as the token reader spends it: the newest tail (at least a
    window) when replay has a newest share, then two streamed buffers of a window and a token."""
    itemsize = token_itemsize(task.vocab)
    window = task.context_length + 1
    reserved = max(replay.newest_window, window) * itemsize if replay.newest_share > 0 else 0
    buffers = 2 * (window + 1) * itemsize
    if data.resident_bytes - reserved >= buffers:
        return []
    return [
        f"data.resident_bytes ({data.resident_bytes:,}) leaves no room to stream windows of "
        f"{window:,} tokens after the newest tail ({reserved:,} bytes at {itemsize} bytes a "
        f"token; two buffers need {buffers:,}); raise data.resident_bytes or lower "
        "replay.newest_window"
    ]
