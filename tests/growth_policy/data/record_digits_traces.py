"""Record real observation traces for the growth-policy tests (run by hand; output is committed).

    .venv/bin/python tests/growth_policy/data/record_digits_traces.py

sklearn's digits (1,797 real 8×8 images), a fixed validation split of 297, training data pushed in 6
cumulative stages. Two fixed MLPs (no growth), so that the traces show what the policies must react
to: ``narrow`` (one hidden layer of 3 units: underfits, its loss plateaus with a small gap) and
``wide`` (256 units: fits its data and overfits while the stages are small). Observations every 50
steps, with the train loss smoothed by an EMA as the workers do.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

STAGES = [200, 400, 600, 900, 1200, 1500]
STEPS_PER_STAGE = 800
EVERY = 50
BATCH = 32


def record(hidden: int, seed: int = 0) -> list[dict[str, object]]:
    torch.manual_seed(seed)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    xv, yv, xt, yt = x[:297], y[:297], x[297:], y[297:]
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    params = sum(p.numel() for p in model.parameters())
    out: list[dict[str, object]] = []
    step, seen, ema = 0, 0, None
    for version, size in enumerate(STAGES):
        for _ in range(STEPS_PER_STAGE):
            idx = torch.randint(0, size, (BATCH,))
            loss = loss_fn(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            seen += BATCH
            value = float(loss.detach())
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            if step % EVERY == 0:
                with torch.no_grad():
                    logits = model(xv)
                    val_loss = float(loss_fn(logits, yv))
                    acc = float((logits.argmax(1) == yv).float().mean())
                out.append(
                    {
                        "step": step,
                        "generation": 0,
                        "generation_step": step,
                        "samples_seen": seen,
                        "passes": seen / size,
                        "dataset_size": size,
                        "val_size": 297,
                        "dataset_version": version,
                        "train_loss": round(ema, 5),
                        "val_loss": round(val_loss, 5),
                        "val_metric": round(acc, 4),
                        "param_count": params,
                    }
                )
    return out


def main() -> None:
    traces = {"narrow": record(3), "wide": record(256)}
    path = Path(__file__).with_name("digits_traces.json")
    path.write_text(json.dumps(traces, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {path}: " + ", ".join(f"{k} {len(v)} observations" for k, v in traces.items()))


if __name__ == "__main__":
    main()
