"""Who may do what: API keys, their roles and scopes, and the admin key file.

A key is either *configured* (``LIFELONG_API_KEYS``, ``LIFELONG_API_KEYS_FILE``, the admin key file),
which is unscoped and can only be changed by restarting the API, or *managed*: created, listed and
revoked through ``/v1/keys`` and kept in Redis as a digest. A managed key may be limited to a set of
jobs and/or to a tenant (a prefix: the tenant ``team-a`` also covers jobs of ``team-a/vision``);
its role applies inside that scope, and a job outside it does not exist for the key (404).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.jobs.errors import (
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    UnauthorizedError,
)
from service.settings import Role, Settings
from service.state.access import AccessStore, KeyRecord

RANK: dict[Role, int] = {"reader": 0, "writer": 1, "admin": 2}
KEY_PREFIX = "ll_"
TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")
ANONYMOUS = "anonymous"
_BEARER = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Principal:
    """The caller: a key's id (never the key), its role, its scope and its limits.

    ``key_id`` is ``anonymous`` with authentication disabled, ``configured:<digest prefix>`` for
    a configured key, and ``key_…`` for a managed one.
    """

    key_id: str
    role: Role
    tenant: str | None = None
    jobs: bool = False
    requests_per_s: int | None = None
    bytes_per_min: int | None = None

    @property
    def scoped(self) -> bool:
        return self.tenant is not None or self.jobs

    def allows(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key_file(path: Path) -> tuple[str, bool]:
    """The admin key in ``path``, made (mode 0600, never readable by others) if there is none;
    returns the key and whether it was made now."""
    from service.settings import read_key_file

    existing = read_key_file(path)
    if existing is not None:
        return existing, False
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")
    return key, True


@dataclass
class Access:
    """Authentication and scope checks of one deployment."""

    settings: Settings
    store: AccessStore
    configured: dict[str, Role] = field(init=False)

    def __post_init__(self) -> None:
        self.configured = dict(self.settings.api_key_hashes)

    async def authenticate(self, scheme: str | None, key: str | None) -> Principal:
        """The principal of a request's Bearer key (401 without one, or with one unknown)."""
        if not self.settings.auth_enabled:
            return Principal(key_id=ANONYMOUS, role="admin")
        if key is None or scheme is None or scheme.lower() != "bearer":
            raise UnauthorizedError(
                "an API key is required: send 'Authorization: Bearer <key>'", headers=_BEARER
            )
        found = digest(key)
        for stored, role in self.configured.items():
            if hmac.compare_digest(stored, found):
                return Principal(key_id=f"configured:{stored[:12]}", role=role)
        record = await self.store.lookup(found)
        if record is None:
            raise UnauthorizedError("the API key is not valid", headers=_BEARER)
        return Principal(
            key_id=record.id,
            role=record.role,
            tenant=record.tenant,
            jobs=record.jobs,
            requests_per_s=record.requests_per_s,
            bytes_per_min=record.bytes_per_min,
        )

    async def can_see(self, principal: Principal, job_id: str) -> bool:
        if not principal.scoped:
            return True
        if principal.jobs and await self.store.key_has_job(principal.key_id, job_id):
            return True
        if principal.tenant is not None:
            tenant = await self.store.tenant_of(job_id)
            return tenant is not None and in_tenant(tenant, principal.tenant)
        return False

    async def require_job_in_scope(self, principal: Principal, job_id: str) -> None:
        """404, worded as for a job that does not exist, when the job is outside the scope."""
        if not await self.can_see(principal, job_id):
            raise NotFoundError(f"job '{job_id}' not found")

    async def visible_jobs(self, principal: Principal) -> list[str] | None:
        """The ids the principal may see, in creation order; None: every job."""
        if not principal.scoped:
            return None
        ids = await self.store.job_ids()
        own = await self.store.key_jobs(principal.key_id) if principal.jobs else set()
        tenants = await self.store.tenants() if principal.tenant is not None else {}
        return [
            i
            for i in ids
            if i in own
            or (principal.tenant is not None and in_tenant(tenants.get(i), principal.tenant))
        ]

    async def adopt(self, principal: Principal, job_id: str) -> None:
        """Put a job that ``principal`` just created into its scope."""
        if principal.tenant is not None:
            await self.store.set_tenant(job_id, principal.tenant)
        if principal.jobs:
            await self.store.add_job_to_key(principal.key_id, job_id)

    # --- key management -------------------------------------------------------------------------

    async def create_key(
        self,
        creator: Principal,
        *,
        role: Role,
        name: str,
        tenant: str | None,
        jobs: list[str] | None,
        requests_per_s: int | None,
        bytes_per_min: int | None,
    ) -> tuple[str, KeyRecord]:
        """A new managed key (the key is returned once, and only its digest is kept)."""
        _require_unscoped_admin(creator)
        if tenant is not None and not TENANT.match(tenant):
            raise InvalidError(
                f"tenant '{tenant[:80]}' must be 1 to 64 letters, digits or '._/-', starting "
                "with a letter or digit"
            )
        known = set(await self.store.job_ids())
        unknown = [j for j in jobs or [] if j not in known]
        if unknown:
            raise NotFoundError(f"'jobs' names jobs that do not exist: {', '.join(unknown[:5])}")
        key = new_key()
        record = KeyRecord(
            id=f"key_{secrets.token_hex(8)}",
            role=role,
            name=name,
            tenant=tenant,
            jobs=jobs is not None,
            requests_per_s=requests_per_s,
            bytes_per_min=bytes_per_min,
            created=time.time(),
            created_by=creator.key_id,
        )
        await self.store.add_key(digest(key), record, jobs or [])
        return key, record

    async def list_keys(self, caller: Principal) -> list[tuple[KeyRecord, list[str]]]:
        _require_unscoped_admin(caller)
        records = await self.store.list_keys()
        return [(r, sorted(await self.store.key_jobs(r.id)) if r.jobs else []) for r in records]

    async def revoke_key(self, caller: Principal, key_id: str) -> KeyRecord:
        _require_unscoped_admin(caller)
        if key_id.startswith("configured:"):
            raise ConflictError(
                f"'{key_id}' is a configured key (LIFELONG_API_KEYS, LIFELONG_API_KEYS_FILE or "
                "the admin key file); remove it there and restart the API"
            )
        record = await self.store.revoke(key_id)
        if record is None:
            raise NotFoundError(f"API key '{key_id[:80]}' not found")
        return record


def in_tenant(job_tenant: str | None, key_tenant: str) -> bool:
    """Whether a job of ``job_tenant`` lies in ``key_tenant`` (itself or a sub-tenant)."""
    if job_tenant is None:
        return False
    return job_tenant == key_tenant or job_tenant.startswith(key_tenant.rstrip("/") + "/")


def _require_unscoped_admin(principal: Principal) -> None:
    if principal.role != "admin" or principal.scoped:
        raise ForbiddenError(
            "managing API keys needs an admin key without a scope; the key's role is "
            f"'{principal.role}'" + (" with a scope" if principal.scoped else "")
        )
