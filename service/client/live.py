"""A live terminal view of a job: its state and metrics at the top, its notable events below.

Used by ``lifelong events`` and by the demo. It reads the job's event stream (the same SSE that any
client can follow), so what it shows is what the service recorded.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from service.api.models import EventPublic

NOTABLE = ("status", "decision", "generation", "command", "data")


@dataclass
class JobView:
    """What the view knows about a job, updated event by event."""

    job_id: str
    title: str = ""
    status: str = "pending"
    reason: str | None = None
    generation: int = 0
    params: int | None = None
    step: int = 0
    dataset_size: int = 0
    val_size: int = 0
    train_loss: float | None = None
    val_loss: float | None = None
    val_metric: float | None = None
    metric_name: str = "accuracy"
    throughput: float = 0.0
    note: str = ""
    lines: deque[Text] = field(default_factory=lambda: deque(maxlen=12))
    history: list[dict[str, Any]] = field(default_factory=list)
    growths: list[dict[str, Any]] = field(default_factory=list)
    pushes: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    # The newest compute snapshot (workers.compute.ComputeMeter.snapshot) and its Unix time.
    compute: dict[str, Any] = field(default_factory=dict)
    compute_time: float = 0.0
    # A language model's text, newest last: (generation, what it wrote), shown under the table.
    samples: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=3))
    sample_log: list[tuple[int, str]] = field(default_factory=list)  # every one

    data_unit: str | None = None  # as the observations say: 'samples', or 'tokens'

    @property
    def unit(self) -> str:
        """What the data is counted in: tokens for a language model, else samples."""
        if self.data_unit:
            return self.data_unit
        return "tokens" if self.metric_name == "perplexity" else "samples"

    def add_sample(self, generation: int, text: str) -> None:
        self.samples.append((generation, text))
        self.sample_log.append((generation, text))
        self._line("sample", f"generation {generation} wrote {len(text):,} characters", "cyan")

    def duty_cycle(self, now: float | None = None) -> float | None:
        """Busy seconds over the seconds since the job started, brought forward from the newest
        snapshot to ``now``: the time since counts as busy while the job trains, idle otherwise."""
        if not self.compute:
            return None
        dt = max(0.0, (time.time() if now is None else now) - self.compute_time)
        busy = float(self.compute.get("busy_s", 0.0))
        if self.status in ("training", "growing"):
            busy += dt
        elapsed = float(self.compute.get("elapsed_s", 0.0)) + dt
        return min(1.0, busy / elapsed) if elapsed > 0 else None

    def _take_compute(self, data: dict[str, Any], when: float) -> None:
        compute = data.get("compute")
        if isinstance(compute, dict) and compute:
            self.compute, self.compute_time = compute, when

    def apply(self, event: EventPublic) -> None:
        data = event.data
        if event.type == "observation":
            self.step = int(data["step"])
            self.generation = int(data["generation"])
            self.params = int(data["param_count"])
            self.dataset_size = int(data["dataset_size"])
            self.val_size = int(data.get("val_size") or 0)
            self.train_loss = data.get("train_loss")
            self.val_loss = data.get("val_loss")
            self.val_metric = data.get("val_metric")
            self.metric_name = data.get("metric_name", "accuracy")
            self.data_unit = data.get("data_unit") or self.data_unit
            self.throughput = float(data.get("throughput") or 0.0)
            self._take_compute(data, float(data.get("wall_time") or event.time))
            self.history.append(
                {k: data.get(k) for k in ("step", "samples_seen", "dataset_size", "generation",
                                          "param_count", "val_metric", "train_loss", "val_loss")}
            )  # fmt: skip
            return
        if event.type == "status":
            self._take_compute(data, event.time)
            if "status" in data:
                self.status = str(data["status"])
                self.reason = data.get("reason")
                self._line("status", f"{self.status}" + (f": {self.reason}" if self.reason else ""))
            return
        if event.type == "decision":
            op = data.get("op")
            style = "bold green" if op else "yellow"
            self._line("decision", str(data.get("reason", "")), style)
            return
        if event.type == "generation":
            self.growths.append(data)
            op = data.get("op") or {}
            after = data.get("val_metric_after")
            before = data.get("val_metric_before")
            metric = (
                f", val {self.metric_name} {before:.3f} → {after:.3f}"
                if before is not None and after is not None
                else ""
            )
            error = data.get("max_abs_error")
            exactness = f"max |Δf| {error:.1e}" if error is not None else "not function-preserving"
            self._line(
                "grown",
                f"generation {data['generation_after']}: {op.get('op')} "
                f"{data['params_before']:,} → {data['params_after']:,} parameters, "
                f"{exactness}{metric}, pause {data.get('pause_s', 0):.2f}s",
                "bold magenta",
            )
            return
        if event.type == "data":
            self.pushes.append({**data, "step": self.step})
            self._line("data", f"+{data['accepted']:,} {self.unit} → {data['train_samples']:,} "
                       f"train / {data['val_samples']:,} val (version {data['version']})")  # fmt: skip
            return
        if event.type == "command":
            self._line("command", f"{data.get('kind')} {data.get('status')}"
                       + (f": {data['detail']}" if data.get("detail") else ""))  # fmt: skip

    def _line(self, kind: str, text: str, style: str = "") -> None:
        elapsed = time.monotonic() - self.started
        line = Text(f"{elapsed:6.1f}s ", style="dim")
        line.append(f"{kind:<9}", style="bold")
        line.append(text, style=style)
        self.lines.append(line)

    def render(self) -> Panel:
        table = Table.grid(padding=(0, 2))
        for _ in range(4):
            table.add_column()
        metric = f"{self.val_metric:.3f}" if self.val_metric is not None else "-"
        loss = f"{self.train_loss:.4f}" if self.train_loss is not None else "-"
        table.add_row("status", Text(self.status, style="bold"), "generation", str(self.generation))
        table.add_row(
            "parameters", f"{self.params:,}" if self.params else "-", "step", f"{self.step:,}"
        )
        table.add_row(
            f"train {self.unit}", f"{self.dataset_size:,}", f"val {self.unit}", f"{self.val_size:,}"
        )
        table.add_row(f"val {self.metric_name}", metric, "train loss", loss)
        table.add_row("throughput", f"{self.throughput:,.0f}/s", "duty cycle", self._duty_text())
        if self.note:
            table.add_row("", "", "", self.note)
        body = Group(table, Text(""), *self.lines, *self._sample_texts())
        return Panel(body, title=self.title or self.job_id, border_style="cyan")

    def _sample_texts(self) -> list[Text]:
        """The newest text samples, a few lines each."""
        out = []
        for generation, text in self.samples:
            shown = "\n".join(text.strip("\n").splitlines()[:4])
            out += [Text(f"\ngeneration {generation} writes:", style="bold cyan"), Text(shown)]
        return out

    def _duty_text(self) -> str:
        """'37% busy, 1.2 GFLOP': the share of the job's time spent training, and its FLOPs."""
        duty = self.duty_cycle()
        if duty is None:
            return "-"
        flops = float(self.compute.get("flops", 0.0))
        return f"{100 * duty:.0f}% busy, {flops / 1e9:,.1f} GFLOP"
