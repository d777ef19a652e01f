"""A typed Python client for the Lifelong REST API (sync, over httpx).

    with LifelongClient("http://127.0.0.1:8000") as client:
        job = client.create_job({"name": "digits", "task": {...}, "model": {...}})
        client.push(job.id, features, labels)              # safetensors body, retried safely
        client.grow(job.id, op="widen", factor=2)
        for event in client.events(job.id):                 # resumes after a dropped connection
            print(event.type, event.data)

Every non-2xx answer raises :class:`LifelongError` with the status code, the ``detail`` sentence and
the per-problem ``errors`` of the answer.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel

from growth_policy import GrowthOp
from service.api.models import (
    CommandList,
    CommandPublic,
    DatasetDetail,
    EventPublic,
    GeneratedToken,
    GenerateResult,
    GenerationList,
    Health,
    JobDeleted,
    JobList,
    JobPublic,
    KeyCreated,
    KeyList,
    KeyPublic,
    KeyRevoked,
    PredictResult,
    PushResult,
    Readiness,
)
from service.jobs.ingest import JSON, NPZ, PARQUET, SAFETENSORS, TEXT

Format = Literal["safetensors", "npz", "parquet", "json"]
CONTENT_TYPE: dict[str, str] = {
    "safetensors": SAFETENSORS,
    "npz": NPZ,
    "parquet": PARQUET,
    "json": JSON,
}
_RETRY_STATUS = frozenset({502, 503, 504})
_M = TypeVar("_M", bound=BaseModel)


class LifelongError(Exception):
    """A non-2xx answer: ``status_code``, ``detail`` and, for several problems, ``errors``."""

    def __init__(
        self, status_code: int, detail: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.errors = errors or []


def encode_batch(
    features: np.ndarray, labels: np.ndarray, fmt: Format = "safetensors"
) -> tuple[bytes, str]:
    """A push body and its Content-Type. Features are sent as float32 (what the server stores)."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    y = np.ascontiguousarray(labels)
    if fmt == "safetensors":
        from safetensors.numpy import save

        return save({"features": x, "labels": y}), SAFETENSORS
    if fmt == "npz":
        buffer = io.BytesIO()
        np.savez(buffer, features=x, labels=y)
        return buffer.getvalue(), NPZ
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        def column(a: np.ndarray) -> Any:
            if a.ndim == 1:
                return pa.array(a)
            flat = a.reshape(a.shape[0], -1)
            return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])

        buffer = io.BytesIO()
        pq.write_table(
            pa.table({"features": column(x), "labels": column(y)}), buffer, compression="none"
        )
        return buffer.getvalue(), PARQUET
    if fmt == "json":
        return json.dumps({"features": x.tolist(), "labels": y.tolist()}).encode(), JSON
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(CONTENT_TYPE)}")


class LifelongClient:
    """One API endpoint. Thread-safe for concurrent calls (httpx.Client is)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries = retries
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    @classmethod
    def from_environment(cls, **kw: Any) -> LifelongClient:
        """A client for ``LIFELONG_API_URL`` with the key of ``LIFELONG_API_KEY``, else of
        ``LIFELONG_API_KEY_FILE``, else the admin key that ``lifelong up`` or ``lifelong serve``
        made in their default folders (``.lifelong/stack/admin-key``, ``.lifelong/admin-key``)."""
        from service.settings import ClientSettings

        cfg = ClientSettings()
        return cls(cfg.api_url, api_key=cfg.key(), **kw)

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, retry: bool = False, **kw: Any) -> httpx.Response:
        """One request; with ``retry`` (idempotent requests only), transport errors and 502-504
        are retried with backoff. A 429 (the key's limits; nothing was done) is retried after
        its Retry-After (at most 10 s a time) whether or not ``retry`` is set."""
        attempts = self.retries + 1
        for attempt in range(attempts):
            wait = min(2.0, 0.1 * 2**attempt)
            try:
                response = self._http.request(method, path, **kw)
            except httpx.TransportError:
                if not retry or attempt + 1 >= attempts:
                    raise
            else:
                last = attempt + 1 >= attempts
                if response.status_code == 429 and not last:
                    wait = _retry_after(response)
                elif response.status_code not in _RETRY_STATUS or not retry or last:
                    _raise_for(response)
                    return response
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _mutate(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A create, command or delete, with a fresh Idempotency-Key so that its retries can
        never act twice."""
        headers = {"Idempotency-Key": str(uuid.uuid4()), **kw.pop("headers", {})}
        return self._request(method, path, retry=True, headers=headers, **kw)

    def _get(self, path: str, model: type[_M], **params: Any) -> _M:
        return model.model_validate_json(
            self._request("GET", path, retry=True, params=params).content
        )

    # --- health -----------------------------------------------------------------------------

    def health(self) -> Health:
        return self._get("/healthz", Health)

    def ready(self) -> Readiness:
        return Readiness.model_validate_json(self._request("GET", "/readyz").content)

    # --- jobs -------------------------------------------------------------------------------

    def create_job(self, spec: BaseModel | Mapping[str, Any]) -> JobPublic:
        body = spec.model_dump(mode="json") if isinstance(spec, BaseModel) else dict(spec)
        return JobPublic.model_validate_json(self._mutate("POST", "/v1/jobs", json=body).content)

    def list_jobs(self, *, offset: int = 0, limit: int = 100) -> JobList:
        return self._get("/v1/jobs", JobList, offset=offset, limit=limit)

    def get_job(self, job_id: str) -> JobPublic:
        return self._get(f"/v1/jobs/{job_id}", JobPublic)

    def delete_job(self, job_id: str, *, force: bool = False) -> JobDeleted:
        """Delete a stopped or failed job (409 while it runs); its MLflow records stay."""
        params = {"force": "true"} if force else None
        response = self._mutate("DELETE", f"/v1/jobs/{job_id}", params=params)
        return JobDeleted.model_validate_json(response.content)

    # --- API keys (an admin key without a scope) ----------------------------------------------

    def create_key(
        self,
        role: Literal["admin", "writer", "reader"],
        *,
        name: str = "",
        tenant: str | None = None,
        jobs: list[str] | None = None,
        requests_per_s: int | None = None,
        bytes_per_min: int | None = None,
    ) -> KeyCreated:
        """A new API key; ``.key`` holds the key itself (shown this once)."""
        body: dict[str, Any] = {"role": role, "name": name}
        for field, value in (
            ("tenant", tenant),
            ("jobs", jobs),
            ("requests_per_s", requests_per_s),
            ("bytes_per_min", bytes_per_min),
        ):
            if value is not None:
                body[field] = value
        response = self._request("POST", "/v1/keys", json=body)
        return KeyCreated.model_validate_json(response.content)

    def list_keys(self) -> list[KeyPublic]:
        return self._get("/v1/keys", KeyList).keys

    def revoke_key(self, key_id: str) -> KeyRevoked:
        response = self._request("DELETE", f"/v1/keys/{key_id}", retry=True)
        return KeyRevoked.model_validate_json(response.content)

    # --- data -------------------------------------------------------------------------------

    def push(
        self,
        job_id: str,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        format: Format = "safetensors",
        idempotency_key: str | None = None,
    ) -> PushResult:
        """Push a batch. A fresh Idempotency-Key is made when none is given, so the automatic
        retries (connection errors, 502-504) can never store the batch twice."""
        body, content_type = encode_batch(features, labels, format)
        return self.push_bytes(job_id, body, content_type, idempotency_key=idempotency_key)

    def push_bytes(
        self, job_id: str, body: bytes, content_type: str, *, idempotency_key: str | None = None
    ) -> PushResult:
        key = idempotency_key or str(uuid.uuid4())
        response = self._request(
            "POST",
            f"/v1/jobs/{job_id}/data",
            retry=True,
            content=body,
            headers={"Content-Type": content_type, "Idempotency-Key": key},
        )
        return PushResult.model_validate_json(response.content)

    def dataset(self, job_id: str, *, offset: int = 0, limit: int = 100) -> DatasetDetail:
        """The manifest: totals and a page of shards (``limit=0``: totals only)."""
        return self._get(f"/v1/jobs/{job_id}/data", DatasetDetail, offset=offset, limit=limit)

    # --- commands ---------------------------------------------------------------------------

    def grow(
        self, job_id: str, op: GrowthOp | Mapping[str, Any] | str, **fields: Any
    ) -> CommandPublic:
        """``grow(id, "widen", factor=2)``, ``grow(id, "deepen", after="hidden.1")``,
        ``grow(id, {"op": "widen", "factor": 2})`` or ``grow(id, GrowthOp(...))``."""
        if isinstance(op, str):
            body: dict[str, Any] = {"op": op, **fields}
        elif isinstance(op, GrowthOp):
            body = op.model_dump(mode="json", exclude_defaults=True) | {"op": op.op}
        else:
            body = dict(op)
        return self._command(job_id, "grow", body)

    def pause(self, job_id: str) -> CommandPublic:
        return self._command(job_id, "pause")

    def resume(self, job_id: str) -> CommandPublic:
        return self._command(job_id, "resume")

    def stop(self, job_id: str) -> CommandPublic:
        return self._command(job_id, "stop")

    def _command(self, job_id: str, kind: str, body: dict[str, Any] | None = None) -> CommandPublic:
        response = self._mutate("POST", f"/v1/jobs/{job_id}/{kind}", json=body)
        return CommandPublic.model_validate_json(response.content)

    def command(self, job_id: str, command_id: str) -> CommandPublic:
        return self._get(f"/v1/jobs/{job_id}/commands/{command_id}", CommandPublic)

    def commands(self, job_id: str, *, limit: int = 100) -> list[CommandPublic]:
        return self._get(f"/v1/jobs/{job_id}/commands", CommandList, limit=limit).commands

    def wait_command(
        self, job_id: str, command_id: str, *, timeout: float = 60.0, interval: float = 0.25
    ) -> CommandPublic:
        """Poll until the command is done, rejected or failed (TimeoutError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            command = self.command(job_id, command_id)
            if command.status.final:
                return command
            if time.monotonic() >= deadline:
                raise TimeoutError(f"command {command_id} still {command.status} after {timeout}s")
            time.sleep(interval)

    # --- generations and models --------------------------------------------------------------

    def generations(self, job_id: str) -> GenerationList:
        return self._get(f"/v1/jobs/{job_id}/generations", GenerationList)

    def architecture(self, job_id: str, generation: int | None = None) -> dict[str, Any]:
        params = {} if generation is None else {"generation": generation}
        response = self._request(
            "GET", f"/v1/jobs/{job_id}/model/architecture", retry=True, params=params
        )
        architecture: dict[str, Any] = response.json()
        return architecture

    def model_weights(self, job_id: str, generation: int | None = None) -> bytes:
        """A generation's weights as safetensors bytes (the architecture is in their metadata)."""
        params = {} if generation is None else {"generation": generation}
        return self._request("GET", f"/v1/jobs/{job_id}/model", retry=True, params=params).content

    def export_model(
        self, job_id: str, fmt: str = "safetensors", generation: int | None = None
    ) -> bytes:
        """A generation's model as safetensors (weights), onnx or pt2 (a torch.export program)."""
        params: dict[str, Any] = {"format": fmt}
        if generation is not None:
            params["generation"] = generation
        return self._request("GET", f"/v1/jobs/{job_id}/model", retry=True, params=params).content

    def predict(
        self, job_id: str, features: np.ndarray, *, generation: int | None = None
    ) -> PredictResult:
        body = {"features": np.asarray(features).tolist(), "generation": generation}
        response = self._request("POST", f"/v1/jobs/{job_id}/predict", json=body)
        return PredictResult.model_validate_json(response.content)

    # --- language models ----------------------------------------------------------------------

    def push_text(
        self, job_id: str, text: str | Sequence[str], *, idempotency_key: str | None = None
    ) -> PushResult:
        """Push text to a language-modelling job: one document (``str``, sent as text/plain) or
        several (a list, sent as JSON ``{"texts": [...]}``). Counts in the answer are tokens."""
        if isinstance(text, str):
            body, content_type = text.encode("utf-8"), f"{TEXT}; charset=utf-8"
        else:
            body, content_type = json.dumps({"texts": list(text)}).encode(), JSON
        return self.push_bytes(job_id, body, content_type, idempotency_key=idempotency_key)

    def push_tokens(
        self,
        job_id: str,
        tokens: np.ndarray,
        doc_offsets: np.ndarray | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> PushResult:
        """Push token ids (int32 or int64, end to end) to a language-modelling job; document d
        is ``tokens[doc_offsets[d]:doc_offsets[d + 1]]`` (without offsets, one document)."""
        from safetensors.numpy import save

        arrays = {"tokens": np.ascontiguousarray(tokens)}
        if doc_offsets is not None:
            arrays["doc_offsets"] = np.ascontiguousarray(doc_offsets, dtype=np.int64)
        return self.push_bytes(job_id, save(arrays), SAFETENSORS, idempotency_key=idempotency_key)

    def generate(self, job_id: str, prompt: str | Sequence[int], **options: Any) -> GenerateResult:
        """Continue ``prompt`` (text, or token ids) with the job's model. ``options``:
        ``max_new_tokens``, ``temperature``, ``top_k``, ``seed``, ``generation``."""
        body = _generate_body(prompt, options, stream=False)
        response = self._request("POST", f"/v1/jobs/{job_id}/generate", json=body)
        return GenerateResult.model_validate_json(response.content)

    def generate_stream(
        self, job_id: str, prompt: str | Sequence[int], **options: Any
    ) -> Iterator[GeneratedToken | GenerateResult]:
        """As :meth:`generate`, token by token: a :class:`GeneratedToken` as each one comes,
        then the whole :class:`GenerateResult`. A failure mid-way raises :class:`LifelongError`
        (status 500) with the server's words."""
        body = _generate_body(prompt, options, stream=True)
        with self._http.stream(
            "POST",
            f"/v1/jobs/{job_id}/generate",
            json=body,
            headers={"Accept": "text/event-stream"},
        ) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for(response)
            for event, data in sse_frames(response.iter_lines()):
                if event == "token":
                    yield GeneratedToken.model_validate_json(data)
                elif event == "done":
                    yield GenerateResult.model_validate_json(data)
                    return
                elif event == "error":
                    raise LifelongError(500, str(json.loads(data).get("detail", data)))

    def score(
        self,
        job_id: str,
        texts: Sequence[str] | None = None,
        *,
        ids: Sequence[Sequence[int]] | None = None,
        generation: int | None = None,
    ) -> PredictResult:
        """The loss (nats per predicted token) and perplexity of each text (or id sequence)
        under a language-modelling job's model: ``predictions[i]`` is ``{tokens, loss,
        perplexity}``."""
        body: dict[str, Any] = {"generation": generation}
        if texts is not None:
            body["texts"] = list(texts)
        if ids is not None:
            body["ids"] = [list(map(int, s)) for s in ids]
        response = self._request("POST", f"/v1/jobs/{job_id}/predict", json=body)
        return PredictResult.model_validate_json(response.content)

    # --- events -----------------------------------------------------------------------------

    def events(
        self,
        job_id: str,
        *,
        last_event_id: str | None = None,
        follow: bool = True,
        reconnect: bool = True,
        read_timeout: float = 120.0,
    ) -> Iterator[EventPublic]:
        """The job's events, oldest first (after ``last_event_id``, if given).

        With ``follow`` the iterator waits for new events until the server ends the stream (the
        job finished) or the caller stops iterating. A dropped connection is resumed from the
        last event received (``Last-Event-ID``) when ``reconnect`` is on, so nothing is lost or
        repeated.
        """
        last = last_event_id
        failures = 0
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    params={"follow": str(follow).lower()},
                    headers=headers,
                    timeout=httpx.Timeout(read_timeout, connect=10.0),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        _raise_for(response)
                    for event in parse_sse(response.iter_lines()):
                        failures = 0
                        last = event.id
                        yield event
                return  # the server ended the stream
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
                failures += 1
                if not reconnect or failures > self.retries:
                    raise
                time.sleep(min(2.0, 0.1 * 2**failures))


def parse_sse(lines: Iterator[str]) -> Iterator[EventPublic]:
    """Events from text/event-stream lines (comments, i.e. keep-alives, are skipped)."""
    for _, data in sse_frames(lines):
        yield EventPublic.model_validate_json(data)


def sse_frames(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """``(event type, data)`` of each event in text/event-stream lines (type ``message`` when
    the event names none; comments, i.e. keep-alives, are skipped)."""
    data: list[str] = []
    event = "message"
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            data, event = [], "message"
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
        elif field == "event":
            event = value.removeprefix(" ")
    if data:
        yield event, "\n".join(data)


def _generate_body(
    prompt: str | Sequence[int], options: dict[str, Any], *, stream: bool
) -> dict[str, Any]:
    known = {"max_new_tokens", "temperature", "top_k", "seed", "generation"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown generate options {unknown}; use {sorted(known)}")
    key = "prompt" if isinstance(prompt, str) else "prompt_ids"
    value = prompt if isinstance(prompt, str) else [int(i) for i in prompt]
    return {key: value, **options, "stream": stream}


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "1")
    return min(10.0, float(value)) if value.isdigit() else 1.0


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        detail = str(body.get("detail", response.text))
        errors = body.get("errors")
    except (ValueError, AttributeError):
        detail, errors = response.text or response.reason_phrase, None
    raise LifelongError(response.status_code, detail, errors)
