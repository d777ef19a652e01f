"""The story of a job as one picture: its validation metric against samples seen, with the growth
points marked, and its parameter count over the same axis.

Drawn by the tracker at each generation's close from the MLflow metric histories of the job's
generation runs, and logged as ``plots/story.png`` in the closing generation's run and in the job's
parent run (where it always shows the newest story).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class GenerationSeries:
    """What one generation's run holds, joined on the step: (samples seen, value) points."""

    generation: int
    op: str
    metric: list[tuple[float, float]] = field(default_factory=list)
    params: list[tuple[float, float]] = field(default_factory=list)


def join_on_step(samples: dict[int, float], values: dict[int, float]) -> list[tuple[float, float]]:
    """``(samples seen, value)`` for every step that has both, in step order."""
    return [(samples[s], values[s]) for s in sorted(values) if s in samples]


def draw_story(series: list[GenerationSeries], metric_name: str, path: str | Path) -> Path:
    """Write the picture to ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})  # fmt: skip
    previous_end: float | None = None
    for gen in series:
        if gen.metric:
            xs, ys = zip(*gen.metric, strict=True)
            top.plot(xs, ys, marker=".", linewidth=1.2, label=f"generation {gen.generation}")
        if gen.params:
            xs, ys = zip(*gen.params, strict=True)
            bottom.step(xs, ys, where="post", linewidth=1.5)
        points = gen.metric or gen.params
        # A growth happens where the generation before it ended (its last observation).
        at = previous_end if previous_end is not None else points[0][0] if points else None
        if gen.generation and at is not None:
            for axis in (top, bottom):
                axis.axvline(at, color="grey", linestyle="--", linewidth=0.8)
            top.annotate(f"{gen.op} → gen {gen.generation}", (at, 1.0),
                         xycoords=("data", "axes fraction"), rotation=90, va="top",
                         ha="right", fontsize=8, color="dimgrey")  # fmt: skip
        if points:
            previous_end = points[-1][0]
    top.set_ylabel(f"validation {metric_name}")
    top.set_title("Validation and model size against samples seen (dashed: growths)")
    top.grid(alpha=0.3)
    if any(gen.metric for gen in series):
        top.legend(fontsize=8, loc="lower right")
    bottom.set_ylabel("parameters")
    bottom.set_xlabel("samples seen")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
