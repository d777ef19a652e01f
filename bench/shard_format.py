"""Shard format: read (decode) speed of safetensors against Parquet and NPZ, in the same run.

For each shape, the same float32 features and int64 labels are encoded once per format; the table
gives the median time to decode the encoded bytes back into numpy arrays (what a worker does on a
cache miss after fetching the bytes from an object store), the time to load the file from the page
cache with each format's own file reader (a local shard), the time to encode, and the size. Parquet stores the features as one fixed-size-list column, the
natural layout for a tensor per row. NPZ is loaded with ``allow_pickle=False``.

Run: ``.venv/bin/python -m bench.shard_format``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load as st_load
from safetensors.numpy import load_file as st_load_file
from safetensors.numpy import save as st_save

from bench._report import table, write_section

Arrays = tuple[np.ndarray, np.ndarray]
Format = tuple[
    Callable[[np.ndarray, np.ndarray], bytes], Callable[[bytes], Arrays], Callable[[Path], Arrays]
]


def encode_safetensors(x: np.ndarray, y: np.ndarray) -> bytes:
    return st_save({"features": x, "labels": y})


def decode_safetensors(payload: bytes) -> Arrays:
    t = st_load(payload)
    return t["features"], t["labels"]


def encode_parquet(x: np.ndarray, y: np.ndarray) -> bytes:
    flat = pa.array(x.reshape(-1))
    features = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(x.shape[1:])))
    tbl = pa.table({"features": features, "labels": pa.array(y)})
    sink = pa.BufferOutputStream()
    pq.write_table(tbl, sink, compression="none")
    return bytes(sink.getvalue())


def decode_parquet(payload: bytes, shape: tuple[int, ...]) -> Arrays:
    tbl = pq.read_table(pa.BufferReader(payload))
    col = tbl.column("features").combine_chunks()
    x = col.values.to_numpy(zero_copy_only=False).reshape(-1, *shape)
    y = tbl.column("labels").to_numpy()
    return x, y


def read_safetensors(path: Path) -> Arrays:
    t = st_load_file(path)
    return t["features"], t["labels"]


def read_parquet(path: Path, shape: tuple[int, ...]) -> Arrays:
    return decode_parquet(path.read_bytes(), shape)


def read_npz(path: Path) -> Arrays:
    with np.load(path, allow_pickle=False) as z:
        return z["features"], z["labels"]


def encode_npz(x: np.ndarray, y: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, features=x, labels=y)
    return buf.getvalue()


def decode_npz(payload: bytes) -> Arrays:
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        return z["features"], z["labels"]


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    shapes = [(10_000, (64,)), (1_000, (3, 32, 32)), (100_000, (16,))]
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for n, sample_shape in shapes:
            x = rng.standard_normal((n, *sample_shape), dtype=np.float32)
            y = rng.integers(0, 10, n)
            formats: dict[str, Format] = {
                "safetensors": (encode_safetensors, decode_safetensors, read_safetensors),
                "parquet": (
                    encode_parquet,
                    lambda b, s=sample_shape: decode_parquet(b, s),
                    lambda p, s=sample_shape: read_parquet(p, s),
                ),
                "npz": (encode_npz, decode_npz, read_npz),
            }
            results = {}
            for name, (encode, decode, read) in formats.items():
                payload = encode(x, y)
                path = Path(tmp) / f"{name}-{n}"
                path.write_bytes(payload)
                for rx, ry in (decode(payload), read(path)):
                    assert np.array_equal(rx, x) and np.array_equal(ry, y), name
                results[name] = (
                    median_ms(lambda d=decode, p=payload: d(p), args.repeats),
                    median_ms(lambda r=read, p=path: r(p), args.repeats),
                    median_ms(lambda e=encode, a=x, b=y: e(a, b), max(5, args.repeats // 3)),
                    len(payload),
                )
            base = results["safetensors"][0]
            for name, (dec, file_dec, enc, size) in results.items():
                rows.append(
                    [
                        f"{n:,} × {'×'.join(map(str, sample_shape))}",
                        name,
                        f"{dec:.3f}",
                        f"{dec / base:.0f}×" if name != "safetensors" else "1×",
                        f"{file_dec:.3f}",
                        f"{enc:.2f}",
                        f"{size / 1e6:.2f}",
                    ]
                )
    body = (
        "Decode = bytes already in memory → numpy arrays (median of "
        f"{args.repeats}); file = each format's file reader on a file in the page cache "
        "(`safetensors.numpy.load_file`, `pq.read_table`, `np.load`); Parquet uncompressed, "
        "features as one fixed-size-list column; NPZ with `allow_pickle=False`.\n\n"
        + table(
            [
                "shard (samples × shape)",
                "format",
                "decode ms",
                "vs safetensors",
                "file load ms",
                "encode ms",
                "MB",
            ],
            rows,
        )
    )
    write_section("shard-format", "Shard format: read speed", body)


if __name__ == "__main__":
    main()
