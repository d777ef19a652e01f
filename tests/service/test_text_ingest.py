"""Pushing text to a language-modelling job: formats, token shards, the split by document, and
every refusal storing nothing (the checks alone, then through a live API)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from service.client import LifelongClient, LifelongError
from service.jobs.errors import (
    BadRequestError,
    InvalidError,
    ServiceError,
    TooLargeError,
    UnsupportedMediaTypeError,
)
from service.jobs.text_ingest import DocumentLimits, Documents, read_documents, validation_split
from tests.service.conftest import JOB_SPEC, LiveServer, batch
from workers.shards import ShardStore
from workers.spec import TaskSpec
from workers.text import encode_text

BYTES = TaskSpec(kind="language_modeling", context_length=16)
IDS = TaskSpec(kind="language_modeling", tokenizer="ids", vocab_size=1000, context_length=16)
LIMITS = DocumentLimits(max_documents=5, max_document_tokens=100)
LM_SPEC: dict[str, Any] = {
    "name": "text",
    "task": {"kind": "language_modeling", "context_length": 16},
    "model": {"family": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16},
    "val_fraction": 0.25,
}


def read(
    body: bytes, fmt: str, task: TaskSpec = BYTES, content_type: str | None = None
) -> Documents:
    return read_documents(body, fmt, content_type, task, LIMITS)


def refused(error: type[ServiceError], body: bytes, fmt: str, task: TaskSpec = BYTES) -> str:
    with pytest.raises(error) as info:
        read(body, fmt, task)
    return info.value.detail


def tokens_body(tokens: np.ndarray, offsets: np.ndarray | None = None) -> bytes:
    arrays = {"tokens": tokens} if offsets is None else {"tokens": tokens, "doc_offsets": offsets}
    return save(arrays)


def test_text_is_one_document_of_its_utf8_bytes() -> None:
    text = "héllo, wörld ✓"
    docs = read(text.encode(), "text", content_type="text/plain; charset=UTF-8")
    assert len(docs) == 1
    np.testing.assert_array_equal(docs.tokens, encode_text(text, BYTES))
    assert docs.tokens.dtype == np.int32
    assert docs.offsets.tolist() == [0, len(text.encode())]


def test_json_texts_are_documents_end_to_end() -> None:
    texts = ["To be", "or not ✓", "x"]
    docs = read(json.dumps({"texts": texts}).encode(), "json")
    assert len(docs) == 3
    lengths = [len(t.encode()) for t in texts]
    assert docs.offsets.tolist() == [0, *np.cumsum(lengths).tolist()]
    for i, text in enumerate(texts):
        part = docs.tokens[docs.offsets[i] : docs.offsets[i + 1]]
        np.testing.assert_array_equal(part, encode_text(text, BYTES))
    tokens, offsets = docs.select(np.array([True, False, True]))
    np.testing.assert_array_equal(tokens, encode_text("To bex", BYTES))
    assert offsets.tolist() == [0, 5, 6]


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_token_ids_with_and_without_offsets(dtype: type) -> None:
    ids = np.array([5, 999, 0, 7, 7], dtype=dtype)
    docs = read(tokens_body(ids, np.array([0, 2, 5])), "safetensors", IDS)
    assert docs.tokens.dtype == np.int32 and docs.tokens.tolist() == ids.tolist()
    assert docs.offsets.tolist() == [0, 2, 5] and len(docs) == 2
    one = read(tokens_body(ids), "safetensors", IDS)
    assert one.offsets.tolist() == [0, 5]


def test_a_document_lands_in_the_same_split_whatever_its_form() -> None:
    """The split hashes a document's bytes: the same text as text/plain, in a JSON list, or as
    byte ids lands in the same split, and a 50% split of many documents is about half."""
    texts = [f"document number {i}" for i in range(400)]
    many = DocumentLimits(max_documents=1000, max_document_tokens=100)
    as_json = read_documents(json.dumps({"texts": texts}).encode(), "json", None, BYTES, many)
    val = validation_split(as_json, 0.5)
    assert 150 < int(val.sum()) < 250
    for i in (0, 1, 2, 3, 399):
        alone = read(texts[i].encode(), "text")
        as_ids = read(tokens_body(encode_text(texts[i], BYTES)), "safetensors")
        assert validation_split(alone, 0.5)[0] == val[i] == validation_split(as_ids, 0.5)[0]
    assert not validation_split(as_json, 0.0).any()


def test_refusals_name_the_problem() -> None:
    assert "byte 0xff at offset 3" in refused(BadRequestError, b"abc\xffdef", "text")
    assert "is empty" in refused(InvalidError, json.dumps({"texts": ["a", ""]}).encode(), "json")
    assert "document 1 is empty" in refused(
        InvalidError, tokens_body(np.array([1, 2], np.int32), np.array([0, 2, 2])), "safetensors"
    )
    # A lone surrogate is no character: JSON that holds one is refused as unreadable.
    assert "not valid JSON" in refused(BadRequestError, b'{"texts": ["a\\ud800b"]}', "json")
    assert "LIFELONG_MAX_DOCUMENT_TOKENS" in refused(TooLargeError, b"x" * 101, "text")
    six = json.dumps({"texts": ["a"] * 6}).encode()
    assert "LIFELONG_MAX_DOCUMENTS_PER_PUSH" in refused(TooLargeError, six, "json")
    out = refused(InvalidError, tokens_body(np.array([1, 256, -1], np.int32)), "safetensors")
    assert "[0, 256)" in out and "2 are outside" in out and "value 256" in out
    assert "[0, 1000)" in refused(
        InvalidError, tokens_body(np.array([1000], np.int64)), "safetensors", IDS
    )
    assert "int32 or int64" in refused(
        InvalidError, tokens_body(np.array([1.0], np.float32)), "safetensors"
    )
    assert "tokenizer is 'ids'" in refused(UnsupportedMediaTypeError, b"abc", "text", IDS)
    features = save({"features": np.zeros((1, 4), np.float32), "labels": np.zeros(1, np.int64)})
    assert "not 'features' and 'labels'" in refused(InvalidError, features, "safetensors")
    assert "npz" in refused(UnsupportedMediaTypeError, b"PK", "npz")
    with pytest.raises(UnsupportedMediaTypeError, match="charset=latin-1"):
        read(b"abc", "text", content_type="text/plain; charset=latin-1")


# --- through the API ------------------------------------------------------------------------


def _job(client: LifelongClient, spec: dict[str, Any] = LM_SPEC) -> str:
    return client.create_job(spec).id


def _stored(server: LiveServer, job_id: str) -> list[tuple[str, list[int], list[int]]]:
    store = ShardStore(server.settings.data_root_uri)
    out = []
    with LifelongClient(server.url) as client:
        for info in client.dataset(job_id).items:
            tokens, offsets = store.read_tokens(info)
            out.append((info.split, tokens.tolist(), offsets.tolist()))
    return out


def test_text_pushes_become_token_shards(client: LifelongClient, server: LiveServer) -> None:
    job = _job(client)
    texts = [f"line {i}: the quick brown fox" for i in range(40)]
    first = client.push_text(job, texts)
    total = sum(len(t.encode()) for t in texts)
    assert first.accepted == total and first.accepted_train + first.accepted_val == total
    assert 0 < first.accepted_val < total  # a 25% split of 40 documents has both splits
    assert len(first.shard_ids) == 2  # one shard per split, one manifest append
    shards = _stored(server, job)
    by_split = {split: (tokens, offsets) for split, tokens, offsets in shards}
    joined = b"".join(bytes(by_split[s][0]) for s in ("train", "val"))
    assert sorted(joined.split(b"line ")) == sorted(
        b"".join(t.encode() for t in texts).split(b"line ")
    )
    assert len(by_split["train"][1]) - 1 + len(by_split["val"][1]) - 1 == 40

    # The same documents again, one by one as text/plain: each lands in its split again.
    val_docs = {
        bytes(by_split["val"][0][a:b])
        for a, b in zip(by_split["val"][1], by_split["val"][1][1:], strict=False)
    }
    for text in texts[:6]:
        again = client.push_text(job, text)
        assert again.accepted_val == (len(text.encode()) if text.encode() in val_docs else 0)

    # Token ids with offsets; a retry with the same key stores nothing more.
    ids = np.frombuffer(b"abcdef", np.uint8).astype(np.int64)
    pushed = client.push_tokens(job, ids, np.array([0, 3, 6]), idempotency_key="tok-1")
    replay = client.push_tokens(job, ids, np.array([0, 3, 6]), idempotency_key="tok-1")
    assert replay == pushed and pushed.accepted == 6
    assert client.dataset(job).samples == total + sum(len(t.encode()) for t in texts[:6]) + 6


def test_refused_text_pushes_store_nothing(client: LifelongClient, server: LiveServer) -> None:
    job = _job(client)
    classifier = _job(client, JOB_SPEC)
    ids_job = _job(
        client, {**LM_SPEC, "task": {**LM_SPEC["task"], "tokenizer": "ids", "vocab_size": 50}}
    )

    def status(job_id: str, body: bytes, content_type: str) -> tuple[int, str]:
        with pytest.raises(LifelongError) as info:
            client.push_bytes(job_id, body, content_type)
        return info.value.status_code, info.value.detail

    assert status(job, b"\xc3\x28", "text/plain")[0] == 400
    assert status(job, b'{"texts": []}', "application/json")[0] == 422
    assert status(job, b'{"texts": [""]}', "application/json")[0] == 422
    code, detail = status(classifier, b"some text", "text/plain")
    assert code == 415 and "language-modelling" in detail and "classification" in detail
    code, detail = status(
        job, json.dumps({"features": [[1.0]], "labels": [0]}).encode(), "application/json"
    )
    assert code == 422 and "not 'features' and 'labels'" in detail
    assert status(ids_job, b"text", "text/plain")[0] == 415
    assert (
        status(ids_job, tokens_body(np.array([50], np.int32)), "application/x-safetensors")[0]
        == 422
    )
    for job_id in (job, classifier, ids_job):
        assert client.dataset(job_id).samples == 0 and server.leftover_files(job_id) == []
    # Features still go to the classifier.
    assert client.push(classifier, *batch(4)).accepted == 4
