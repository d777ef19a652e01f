"""Reading and checking a push to a language-modelling job: text or token ids, as documents.

Content types of a language-modelling job (``task.kind == "language_modeling"``)::

    text/plain                  one document, UTF-8                        (tokenizer 'bytes')
    application/json            {"texts": ["...", ...]}, several documents  (tokenizer 'bytes')
    application/x-safetensors   'tokens' (T,) int32 or int64, and optionally 'doc_offsets'
                                (D+1,) integers 0 = o₀ < o₁ < … < o_D = T; without it, the
                                tokens are one document                     (either tokenizer)

A document is a sequence of token ids: for the ``bytes`` tokenizer its UTF-8 bytes (what
``workers.text.encode_text`` gives), for ``ids`` the ids as sent. Each document goes whole to the
training or the validation split, chosen by a hash of its bytes (:func:`validation_split`), so the
same document always lands in the same split and none straddles it. Every problem is refused before
anything is stored, with the status and a sentence that names it.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
import pydantic_core

from service.jobs.errors import (
    BadRequestError,
    InvalidError,
    TooLargeError,
    UnsupportedMediaTypeError,
)
from service.jobs.ingest import TEXT
from workers.spec import TaskSpec

LM_KIND = "language_modeling"
# What a language-modelling job takes, for the answers that refuse something else.
LM_TYPES = f'{TEXT} (UTF-8), application/json {{"texts": [...]}} or application/x-safetensors'
_UTF8 = ("utf-8", "utf8", "us-ascii", "ascii")
_TOKEN_NAMES = ("tokens", "doc_offsets")


@dataclass(frozen=True)
class DocumentLimits:
    """How much one push may hold (the settings LIFELONG_MAX_DOCUMENTS_PER_PUSH and
    LIFELONG_MAX_DOCUMENT_TOKENS)."""

    max_documents: int
    max_document_tokens: int


@dataclass(frozen=True)
class Documents:
    """The documents of a push, checked: their tokens end to end, and where each one ends."""

    tokens: np.ndarray  # (T,) int32
    offsets: np.ndarray  # (D+1,) int64: 0, end of document 1, ..., T
    keys: list[bytes]  # the bytes whose hash chooses each document's split

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokens and offsets of the documents where ``mask`` is True, end to end."""
        parts = [self.tokens[self.offsets[i] : self.offsets[i + 1]] for i in np.flatnonzero(mask)]
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
        tokens = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return np.ascontiguousarray(tokens, dtype=np.int32), offsets


def is_language_modeling(task: TaskSpec) -> bool:
    return str(task.kind) == LM_KIND


def refuse_text(task: TaskSpec) -> UnsupportedMediaTypeError:
    """The answer to text pushed to a job that does not learn language."""
    return UnsupportedMediaTypeError(
        f"Content-Type '{TEXT}' is for language-modelling jobs, and this job's task is "
        f"'{task.kind}'; push 'features' and 'labels' (application/x-safetensors, "
        "application/x-npz, application/vnd.apache.parquet or application/json)"
    )


def read_documents(
    body: bytes, fmt: str, content_type: str | None, task: TaskSpec, limits: DocumentLimits
) -> Documents:
    """The documents of a push to a language-modelling job, or the error that names the first
    problem (nothing is stored before this returns)."""
    if not body:
        raise BadRequestError(f"the body is empty; send {LM_TYPES}")
    if fmt in ("text", "json") and task.tokenizer != "bytes":
        raise UnsupportedMediaTypeError(
            f"this job's tokenizer is 'ids' (vocab_size {task.output_dim}), which reads no text: "
            "push token ids as application/x-safetensors 'tokens' (with 'doc_offsets' for "
            "several documents)"
        )
    if fmt == "text":
        _require_utf8_charset(content_type)
        documents = [_utf8_document(body)]
    elif fmt == "json":
        documents = _json_documents(body, limits)
    elif fmt == "safetensors":
        return _token_documents(body, task, limits)
    else:
        raise UnsupportedMediaTypeError(
            f"a language-modelling job takes {LM_TYPES} ('tokens'), not {fmt}"
        )
    return _from_byte_documents(documents, limits)


def _require_utf8_charset(content_type: str | None) -> None:
    for part in (content_type or "").split(";")[1:]:
        name, _, value = part.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in _UTF8:
            raise UnsupportedMediaTypeError(
                f"text must be UTF-8, and the Content-Type says charset={charset[:40]}; send "
                "'text/plain; charset=utf-8'"
            )


def _utf8_document(body: bytes) -> bytes:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(
            f"the text is not valid UTF-8: byte 0x{body[exc.start]:02x} at offset {exc.start:,} "
            f"({exc.reason}); send UTF-8 text"
        ) from None
    return body


def _json_documents(body: bytes, limits: DocumentLimits) -> list[bytes]:
    try:
        document = pydantic_core.from_json(body)
    except ValueError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidError('the JSON body must be an object: {"texts": ["...", ...]}')
    if "features" in document or "labels" in document:
        raise InvalidError(
            "this job learns language (task 'language_modeling'): push text or token ids "
            f"({LM_TYPES} 'tokens'), not 'features' and 'labels'"
        )
    extra = sorted(k for k in document if k != "texts")
    if extra or "texts" not in document:
        found = f"; unknown {', '.join(repr(k[:40]) for k in extra[:5])}" if extra else ""
        raise InvalidError(f"the JSON object must hold exactly 'texts', a list of strings{found}")
    texts = document["texts"]
    if not isinstance(texts, list):
        raise InvalidError("'texts' must be a list of strings, one per document")
    _check_count(len(texts), limits)
    out = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidError(f"texts[{index}] is a {_json_type(text)}; every text is a string")
        out.append(text.encode("utf-8"))  # the JSON parser refuses lone surrogates
    return out


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check_count(count: int, limits: DocumentLimits) -> None:
    if count == 0:
        raise InvalidError("the push holds no document; send at least one non-empty text")
    if count > limits.max_documents:
        raise TooLargeError(
            f"{count:,} documents in one push, above the limit of {limits.max_documents:,} "
            "(LIFELONG_MAX_DOCUMENTS_PER_PUSH); split the push"
        )


def _check_lengths(lengths: np.ndarray, limits: DocumentLimits, unit: str) -> None:
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        where = "the document" if len(lengths) == 1 else f"document {int(empty[0])}"
        raise InvalidError(
            f"{where} is empty ({len(empty)} empty in this push); every document needs at "
            f"least one {unit}"
        )
    long = np.flatnonzero(lengths > limits.max_document_tokens)
    if len(long):
        first = int(long[0])
        where = "the document" if len(lengths) == 1 else f"document {first}"
        raise TooLargeError(
            f"{where} has {int(lengths[first]):,} tokens, above the limit of "
            f"{limits.max_document_tokens:,} per document (LIFELONG_MAX_DOCUMENT_TOKENS); split "
            "it into several documents"
        )


def _from_byte_documents(documents: list[bytes], limits: DocumentLimits) -> Documents:
    """Documents of the ``bytes`` tokenizer: each one's token ids are its UTF-8 bytes."""
    _check_count(len(documents), limits)
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    _check_lengths(lengths, limits, "byte")
    joined = np.frombuffer(b"".join(documents), dtype=np.uint8)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
    return Documents(joined.astype(np.int32), offsets, list(documents))


def _token_documents(body: bytes, task: TaskSpec, limits: DocumentLimits) -> Documents:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors: dict[str, np.ndarray] = load(body)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise BadRequestError(f"the body is not a readable safetensors file: {exc}") from None
    if "features" in tensors or "labels" in tensors:
        raise InvalidError(
            "this job learns language (task 'language_modeling'): push token ids ('tokens', "
            "and 'doc_offsets' for several documents) or text, not 'features' and 'labels'"
        )
    extra = sorted(n for n in tensors if n not in _TOKEN_NAMES)
    if "tokens" not in tensors or extra:
        found = f"; unknown {', '.join(repr(n[:40]) for n in extra[:5])}" if extra else ""
        raise InvalidError(
            f"the safetensors file must hold 'tokens' and, for several documents, "
            f"'doc_offsets'{found}"
        )
    tokens = _check_ids(tensors["tokens"], task)
    if "doc_offsets" in tensors:
        offsets = _check_offsets(tensors["doc_offsets"], len(tokens), limits)
    else:
        offsets = np.array([0, len(tokens)], dtype=np.int64)
    lengths = np.diff(offsets)
    _check_lengths(lengths, limits, "token")
    # bytes: the bytes of the text the ids spell, so that a text and its ids share a split
    dtype = np.uint8 if task.tokenizer == "bytes" else np.dtype("<i4")
    keys = [tokens[a:b].astype(dtype).tobytes() for a, b in itertools.pairwise(offsets)]
    return Documents(tokens, offsets, keys)


def _check_ids(tokens: np.ndarray, task: TaskSpec) -> np.ndarray:
    if tokens.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise InvalidError(f"'tokens' has dtype {tokens.dtype}; send int32 or int64 token ids")
    if tokens.ndim != 1:
        raise InvalidError(
            f"'tokens' must be one sequence of ids, shape [T]; got {list(tokens.shape)} (send "
            "several documents end to end, with 'doc_offsets')"
        )
    vocab = task.output_dim
    bad = (tokens < 0) | (tokens >= vocab)
    if bad.any():
        first = int(np.argmax(bad))
        raise InvalidError(
            f"token ids must be in [0, {vocab}) (the vocabulary of tokenizer "
            f"'{task.tokenizer}'); {_outside(int(bad.sum()))}, the first at position "
            f"{first:,} (value {int(tokens[first])})"
        )
    return np.ascontiguousarray(tokens, dtype=np.int32)


def _outside(count: int) -> str:
    return f"{count:,} {'is' if count == 1 else 'are'} outside"


def _check_offsets(offsets: np.ndarray, total: int, limits: DocumentLimits) -> np.ndarray:
    if offsets.dtype.kind not in "iu" or offsets.ndim != 1:
        raise InvalidError(
            f"'doc_offsets' must be integers of shape [D+1]; got dtype {offsets.dtype}, shape "
            f"{list(offsets.shape)}"
        )
    _check_count(max(0, len(offsets) - 1), limits)
    out = offsets.astype(np.int64)
    if out[0] != 0 or out[-1] != total:
        raise InvalidError(
            f"'doc_offsets' must start at 0 and end at the number of tokens ({total:,}); got "
            f"{int(out[0]):,} … {int(out[-1]):,}"
        )
    if (np.diff(out) < 0).any():
        raise InvalidError("'doc_offsets' must not decrease: document i is tokens[o_i:o_(i+1)]")
    return out


def validation_split(documents: Documents, val_fraction: float) -> np.ndarray:
    """True for the documents that belong to the validation split.

    A document's split depends only on its bytes (its UTF-8 text for the ``bytes`` tokenizer, its
    ids as little-endian int32 for ``ids``): its BLAKE2b-64 digest read as an integer h is in
    validation when h < ``val_fraction`` × 2⁶⁴. So the same document lands in the same split in
    every push, and no document is split between the two.
    """
    if val_fraction <= 0.0:
        return np.zeros(len(documents), dtype=bool)
    threshold = min(int(val_fraction * 2.0**64), 2**64 - 1)
    digests = [
        int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        for key in documents.keys
    ]
    return np.array([d < threshold for d in digests], dtype=bool)


def require_language_modeling(job_id: str, task: TaskSpec, what: str) -> None:
    """Refuse ``what`` (a route that needs a language model) on a job of another task."""
    if not is_language_modeling(task):
        raise InvalidError(
            f"{what} needs a language-modelling job (task.kind '{LM_KIND}'), and job "
            f"'{job_id}' learns {task.kind}"
        )


def text_ids(text: str, task: TaskSpec, name: str) -> list[int]:
    """A text's token ids under the task's tokenizer ('bytes': its UTF-8 bytes)."""
    if task.tokenizer != "bytes":
        raise InvalidError(
            f"this job's tokenizer is 'ids' (vocab_size {task.output_dim}), which reads no "
            f"text: give token ids instead of text ({name})"
        )
    try:
        return list(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidError(
            f"{name} holds a lone surrogate (\\u{ord(text[exc.start]):04x}) at character "
            f"{exc.start:,}, which is not a character and has no UTF-8 form"
        ) from None


def check_ids(ids: list[int], task: TaskSpec, name: str) -> list[int]:
    """Token ids inside the task's vocabulary, or the error that names the first outside."""
    vocab = task.output_dim
    bad = [i for i, t in enumerate(ids) if not 0 <= t < vocab]
    if bad:
        raise InvalidError(
            f"{name} must hold token ids in [0, {vocab}) (the vocabulary of tokenizer "
            f"'{task.tokenizer}'); {_outside(len(bad))}, the first at position {bad[0]:,} "
            f"(value {ids[bad[0]]})"
        )
    return ids


def prompt_ids(
    prompt: str | None, ids: list[int] | None, task: TaskSpec, *, top_k: int | None
) -> list[int]:
    """The prompt of a generation as token ids, checked against the job's task: given once
    (text or ids), not empty, inside the vocabulary and the context."""
    if prompt is not None and ids is not None:
        raise InvalidError("give the prompt once: 'prompt' (text) or 'prompt_ids', not both")
    if prompt is None and ids is None:
        raise InvalidError("give a prompt: 'prompt' (text) or 'prompt_ids' (token ids)")
    tokens = text_ids(prompt, task, "'prompt'") if prompt is not None else list(ids or [])
    if not tokens:
        raise InvalidError(
            "the prompt is empty; give at least one token (a model without a start token "
            "needs something to continue)"
        )
    check_ids(tokens, task, "'prompt_ids'" if prompt is None else "'prompt'")
    if len(tokens) > task.context_length:
        raise InvalidError(
            f"the prompt has {len(tokens):,} tokens, above the model's context_length of "
            f"{task.context_length:,}; shorten it to its last {task.context_length:,} tokens"
        )
    if top_k is not None and top_k > task.output_dim:
        raise InvalidError(
            f"top_k {top_k:,} is above the vocabulary of {task.output_dim:,} tokens; give at "
            f"most {task.output_dim:,}, or none to sample from all"
        )
    return tokens


def scored_ids(
    texts: list[str] | None, ids: list[list[int]] | None, task: TaskSpec
) -> list[list[int]]:
    """The token ids of the texts (or id sequences) to score; each needs two tokens at least
    (the first is context, the rest are predicted)."""
    if texts is not None and ids is not None:
        raise InvalidError("give 'texts' or 'ids' to score, not both")
    if texts is not None:
        sequences = [text_ids(t, task, f"texts[{i}]") for i, t in enumerate(texts)]
        name = "texts"
    else:
        sequences = [check_ids(list(s), task, f"ids[{i}]") for i, s in enumerate(ids or [])]
        name = "ids"
    for index, sequence in enumerate(sequences):
        if len(sequence) < 2:
            raise InvalidError(
                f"{name}[{index}] has {len(sequence)} token(s); scoring needs at least 2 (the "
                "first is context, each later one is predicted)"
            )
    return sequences
