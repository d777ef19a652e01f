"""Errors of the domain layer, each with the HTTP status it answers with.

Every error answer has the same JSON body (``service.models.ErrorBody``): ``detail``, one sentence
that names the problem and what to change, and for requests with several problems ``errors``, one
``{loc, msg}`` per problem.
"""

from __future__ import annotations

from typing import ClassVar

from service.jobs.spec import SpecProblem


class ServiceError(Exception):
    status_code: ClassVar[int] = 400

    def __init__(
        self,
        detail: str,
        *,
        errors: list[SpecProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers


class BadRequestError(ServiceError):
    """The body cannot be read at all: malformed JSON, NPZ, safetensors or Parquet."""

    status_code = 400


class UnauthorizedError(ServiceError):
    status_code = 401


class ForbiddenError(ServiceError):
    status_code = 403


class NotFoundError(ServiceError):
    status_code = 404


class ConflictError(ServiceError):
    """The request is valid but the job's state refuses it (stopped job, reused key, full)."""

    status_code = 409


class TooLargeError(ServiceError):
    """Body bytes or samples above the configured limits."""

    status_code = 413


class UnsupportedMediaTypeError(ServiceError):
    status_code = 415


class InvalidError(ServiceError):
    """Readable, but not valid for the job: shapes, dtypes, values, spec problems."""

    status_code = 422


class UnavailableError(ServiceError):
    status_code = 503


class TooManyRequestsError(ServiceError):
    """An API key above its requests per second or bytes per minute (with Retry-After)."""

    status_code = 429
