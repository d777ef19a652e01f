"""Idempotency-Key on the mutating routes that are not pushes (create, grow, pause, resume, stop,
delete), with the semantics of pushes: a retry with the same key and the same request gets the
original answer (with ``Idempotent-Replayed: true``) and changes nothing; the same key with another
request is a 409. Only a successful answer is kept: a request that failed may be retried as is.

The answer is kept under the caller's key id, the method and the path, for
``LIFELONG_IDEMPOTENCY_TTL_S``. While the first request runs, a concurrent retry gets a 409 that
asks it to retry (the first request holds a claim, which lapses after a few minutes should its
process die).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request, Response
from pydantic import BaseModel

from service.api.auth import CurrentPrincipal, get_access
from service.jobs.access import Access
from service.jobs.control import check_idempotency_key
from service.jobs.errors import ConflictError

M = TypeVar("M", bound=BaseModel)
# Stated in the schema, checked by check_idempotency_key (a 400 that names the problem).
IDEMPOTENCY_KEY_SCHEMA = {"minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"}
CLAIM_TTL_S = 300
REPLAYED = "Idempotent-Replayed"


@dataclass
class Replayable:
    """One request that may carry an Idempotency-Key."""

    access: Access
    key: str | None
    scope: str
    ttl_s: int

    async def run(
        self,
        response: Response,
        fingerprint: bytes,
        call: Callable[[], Awaitable[M]],
        model: type[M],
    ) -> M:
        """``call()``'s answer, once per key: a retry gets the stored answer back."""
        if self.key is None:
            return await call()
        store = self.access.store
        redis_key = store.keys.request(self.scope, self.key)
        digest = hashlib.sha256(fingerprint).hexdigest()
        claim = json.dumps({"state": "pending", "fingerprint": digest, "by": uuid.uuid4().hex})
        while not await store.claim_request(redis_key, claim, CLAIM_TTL_S):
            stored = await store.get_request(redis_key)
            if stored is None:  # the first request failed (or lapsed) since: this one runs
                continue
            if stored.get("fingerprint") != digest:
                raise ConflictError(
                    "this Idempotency-Key was already used for a different request; use a new "
                    "key for a new request, and the same request when retrying"
                )
            if stored.get("state") != "done":
                raise ConflictError(
                    "a request with this Idempotency-Key is still being answered; retry shortly",
                    headers={"Retry-After": "1"},
                )
            response.headers[REPLAYED] = "true"
            return model.model_validate(stored["body"])
        try:
            answer = await call()
        except BaseException:
            await store.release_request(redis_key, claim)
            raise
        done = {"state": "done", "fingerprint": digest, "body": answer.model_dump(mode="json")}
        await store.finish_request(redis_key, json.dumps(done), self.ttl_s)
        return answer


def replayable(
    request: Request,
    who: CurrentPrincipal,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Makes retries safe: a retry with the same key and request returns the "
            "original answer (with 'Idempotent-Replayed: true') and changes nothing; the same "
            "key with another request is a 409.",
            examples=["0b8f5d0e-6c53-4c35-9a9b-2f0f0d2f8d10"],
            json_schema_extra=IDEMPOTENCY_KEY_SCHEMA,
        ),
    ] = None,
) -> Replayable:
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
    access = get_access(request)
    scope = f"{who.key_id}\0{request.method}\0{request.url.path}"
    return Replayable(access, idempotency_key, scope, access.settings.idempotency_ttl_s)


Idempotent = Annotated[Replayable, Depends(replayable)]
