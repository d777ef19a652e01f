"""API keys: create, list and revoke them without restarting the API (an admin key without a
scope only). Keys are kept in Redis as digests; a revoked key is refused from its next request."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status

from service.api.auth import AccessDep, AdminKey
from service.api.models import ErrorBody, KeyCreate, KeyCreated, KeyList, KeyPublic, KeyRevoked

router = APIRouter(prefix="/v1/keys", tags=["keys"])

_ADMIN_ONLY: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "Not an admin key, or an admin key with a scope."},
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        **_ADMIN_ONLY,
        404: {"model": ErrorBody, "description": "A job named in 'jobs' does not exist."},
    },
)
async def create_key(
    body: KeyCreate, who: AdminKey, access: AccessDep, response: Response
) -> KeyCreated:
    """Create an API key. The answer holds the key itself, once; keep it safe."""
    key, record = await access.create_key(
        who,
        role=body.role,
        name=body.name,
        tenant=body.tenant,
        jobs=body.jobs,
        requests_per_s=body.requests_per_s,
        bytes_per_min=body.bytes_per_min,
    )
    response.headers["Cache-Control"] = "no-store"
    return KeyCreated(**KeyPublic.of(record, sorted(set(body.jobs or []))).model_dump(), key=key)


@router.get("", responses=_ADMIN_ONLY)
async def list_keys(who: AdminKey, access: AccessDep) -> KeyList:
    """The keys created through the API (configured keys are not listed), oldest first."""
    return KeyList(keys=[KeyPublic.of(r, jobs) for r, jobs in await access.list_keys(who)])


@router.delete(
    "/{key_id}",
    responses={
        **_ADMIN_ONLY,
        404: {"model": ErrorBody, "description": "No such key."},
        409: {"model": ErrorBody, "description": "A configured key (change it and restart)."},
    },
)
async def revoke_key(
    key_id: Annotated[str, Path(max_length=100, examples=["key_3f9c2a7d1e5b8c04"])],
    who: AdminKey,
    access: AccessDep,
) -> KeyRevoked:
    """Revoke a key: it is refused from its next request on, by every API process."""
    record = await access.revoke_key(who, key_id)
    return KeyRevoked(id=record.id)
