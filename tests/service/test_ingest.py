"""Body formats, schema checks and the validation split (no server)."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from service.client import encode_batch
from service.jobs import ingest
from service.jobs.errors import (
    BadRequestError,
    InvalidError,
    ServiceError,
    TooLargeError,
    UnsupportedMediaTypeError,
)
from workers.spec import TaskSpec

CLS = TaskSpec(kind="classification", input_shape=(2, 3), num_classes=5)
REG = TaskSpec(kind="regression", input_shape=(4,), num_outputs=2)
LIMITS = {"max_samples": 1000, "max_decoded_bytes": 1 << 20}


def decode_check(body: bytes, content_type: str, task: TaskSpec = CLS) -> ingest.CheckedBatch:
    batch = ingest.decode(body, ingest.media_type(content_type), **LIMITS)
    return ingest.check(batch, task, max_samples=LIMITS["max_samples"])


def refused(error: type[ServiceError], body: bytes, content_type: str, task: TaskSpec = CLS) -> str:
    with pytest.raises(error) as info:
        decode_check(body, content_type, task)
    return info.value.detail


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "parquet", "json"])
def test_every_format_round_trips(fmt: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 2, 3)).astype(np.float32)
    y = rng.integers(0, 5, 7)
    body, content_type = encode_batch(x, y, fmt)  # type: ignore[arg-type]
    checked = decode_check(body, content_type)
    assert checked.features.dtype == np.float32
    assert checked.features.shape == (7, 2, 3)
    np.testing.assert_array_equal(checked.features, x)
    assert checked.labels.dtype == np.int64
    np.testing.assert_array_equal(checked.labels, y)


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "parquet", "json"])
def test_regression_targets(fmt: str) -> None:
    x = np.ones((3, 4), np.float64)
    y = np.arange(6, dtype=np.float64).reshape(3, 2)
    body, content_type = encode_batch(x, y, fmt)  # type: ignore[arg-type]
    checked = decode_check(body, content_type, REG)
    assert checked.labels.dtype == np.float32
    assert checked.labels.shape == (3, 2)


def test_flattened_samples_are_reshaped_and_ints_become_float32() -> None:
    body, ct = encode_batch(np.arange(12).reshape(2, 6), np.array([0, 4]), "safetensors")
    assert decode_check(body, ct).features.shape == (2, 2, 3)


def test_content_type_parameters_and_aliases() -> None:
    assert ingest.media_type("application/json; charset=utf-8") == "json"
    assert ingest.media_type("Application/X-Parquet") == "parquet"
    with pytest.raises(UnsupportedMediaTypeError, match="send one of application/x-safetensors"):
        ingest.media_type("text/csv")
    with pytest.raises(UnsupportedMediaTypeError, match="a Content-Type is required"):
        ingest.media_type(None)


def test_unreadable_bodies_are_400() -> None:
    assert "not a readable safetensors file" in refused(
        BadRequestError, b"\x00" * 20, ingest.SAFETENSORS
    )
    assert "not a readable .npz archive" in refused(BadRequestError, b"PK nonsense", ingest.NPZ)
    assert "not a readable Parquet file" in refused(BadRequestError, b"PAR1xx", ingest.PARQUET)
    assert "not valid JSON" in refused(BadRequestError, b'{"features": [', ingest.JSON)
    assert "body is empty" in refused(BadRequestError, b"", ingest.JSON)


def test_npz_with_pickled_objects_is_refused() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, features=np.array([{"a": 1}], dtype=object), labels=np.array([0]))
    assert "without pickle" in refused(BadRequestError, buffer.getvalue(), ingest.NPZ)


def test_npz_bomb_is_refused_before_decompression() -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, features=np.zeros((300_000, 6), np.float32), labels=np.zeros(1))
    assert len(buffer.getvalue()) < 100_000
    assert "unpacks to" in refused(TooLargeError, buffer.getvalue(), ingest.NPZ)


def test_wrong_keys_are_named() -> None:
    body = json.dumps({"features": [[1] * 6], "label": [0]}).encode()
    detail = refused(InvalidError, body, ingest.JSON)
    assert "missing 'labels'" in detail
    assert "unknown 'label'" in detail
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("x.npy", b"")
    assert "missing 'features' and 'labels'" in refused(InvalidError, buffer.getvalue(), ingest.NPZ)


def test_schema_problems_are_named() -> None:
    def js(features: object, labels: object) -> bytes:
        return json.dumps({"features": features, "labels": labels}).encode()

    ok_row = [[0.0] * 3] * 2
    assert "must have shape [2, 3]" in refused(InvalidError, js([[0.0] * 5], [0]), ingest.JSON)
    assert "2 feature rows but 1 labels" in refused(
        InvalidError, js([ok_row, ok_row], [0]), ingest.JSON
    )
    assert "the batch is empty" in refused(InvalidError, js([], []), ingest.JSON)
    assert "ragged rows" in refused(InvalidError, js([[1.0, 2.0], [1.0]], [0, 1]), ingest.JSON)
    assert "not a regular array of numbers" in refused(
        InvalidError, js([[["a"] * 3] * 2], [0]), ingest.JSON
    )
    assert "'labels' must hold numbers only" in refused(
        InvalidError, js([ok_row], ["cat"]), ingest.JSON
    )
    nan = (
        b'{"features": [[[NaN, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, Infinity, 0]]], "labels": [0, 1]}'
    )
    detail = refused(InvalidError, nan, ingest.JSON)
    assert "2 non-finite values" in detail and "first at sample 0" in detail
    huge = js([[[1e39, 0, 0], [0, 0, 0]]], [0])  # finite in float64, inf in float32
    assert "beyond float32 range" in refused(InvalidError, huge, ingest.JSON)
    detail = refused(InvalidError, js([ok_row, ok_row], [1, 5]), ingest.JSON)
    assert "class indices in [0, 5)" in detail and "first at sample 1 (value 5)" in detail
    assert "must be integers" in refused(InvalidError, js([ok_row], [1.5]), ingest.JSON)
    assert "shape [1, 2]" in refused(
        InvalidError, js([[0.0] * 4], [[1.0, 2.0, 3.0]]), ingest.JSON, REG
    )


def test_binary_dtype_problems() -> None:
    body, ct = encode_batch(np.zeros((2, 6)), np.zeros(2, dtype=np.float32), "safetensors")
    assert "must be integers (class indices); got dtype float32" in refused(InvalidError, body, ct)
    from safetensors.numpy import save

    body = save({"features": np.zeros((2, 6), np.complex64), "labels": np.zeros(2, np.int64)})
    assert "dtype complex64" in refused(InvalidError, body, ingest.SAFETENSORS)


def test_parquet_ragged_and_null_rows() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(table: pa.Table) -> bytes:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return buffer.getvalue()

    ragged = pa.table({"features": [[1.0] * 6, [1.0] * 5], "labels": [0, 1]})
    assert "different lengths (5 to 6)" in refused(InvalidError, parquet(ragged), ingest.PARQUET)
    nulls = pa.table({"features": [[1.0] * 6, None], "labels": [0, 1]})
    assert "missing (null)" in refused(InvalidError, parquet(nulls), ingest.PARQUET)


def test_too_many_samples_is_413() -> None:
    body = json.dumps({"features": [[0.0] * 6] * 1001, "labels": [0] * 1001}).encode()
    assert "1,001 samples in one push, above the limit of 1,000" in refused(
        TooLargeError, body, ingest.JSON
    )
    body, ct = encode_batch(np.zeros((1001, 6)), np.zeros(1001, np.int64), "safetensors")
    assert "above the limit of 1,000" in refused(TooLargeError, body, ct)


def test_validation_split_is_a_fixed_share_by_sample_hash() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 8)).astype(np.float32)
    mask = ingest.validation_mask(x, 0.2)
    assert abs(mask.mean() - 0.2) < 0.01
    # The same sample lands in the same split wherever it appears, alone or in another batch.
    np.testing.assert_array_equal(ingest.validation_mask(x[::-1], 0.2), mask[::-1])
    np.testing.assert_array_equal(ingest.validation_mask(x[5:6], 0.2), mask[5:6])
    # A larger fraction only adds samples to validation.
    assert (ingest.validation_mask(x, 0.3) | ~mask).all()
    assert not ingest.validation_mask(x, 0.0).any()


def test_split_is_stable_across_releases() -> None:
    # Fixed vectors: changing the hash would move samples between splits of existing jobs.
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    assert ingest.validation_mask(x, 0.5).nonzero()[0].tolist() == EXPECTED_SPLIT


EXPECTED_SPLIT = [4, 8, 9]
