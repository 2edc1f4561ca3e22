"""One error hierarchy with stable codes.

The gateway maps these to HTTP in one place; subscribers nack what is ``transient`` and
acknowledge-and-report what is permanent.
"""

from __future__ import annotations


class TuneFleetError(Exception):
    """Base of every error TuneFleet raises on purpose."""

    code = "internal"
    http_status = 500
    transient = False

    def __init__(self, message: str, *, field: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details or {}

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        if self.details:
            body["details"] = self.details
        return body


class ValidationFailed(TuneFleetError):
    code = "validation_failed"
    http_status = 422


class DatasetInvalid(ValidationFailed):
    code = "dataset_invalid"


class ConfigIncompatible(ValidationFailed):
    code = "config_incompatible"


class NotFound(TuneFleetError):
    code = "not_found"
    http_status = 404


class Unauthorized(TuneFleetError):
    code = "unauthorized"
    http_status = 401


class Conflict(TuneFleetError):
    code = "conflict"
    http_status = 409


class PayloadTooLarge(TuneFleetError):
    code = "payload_too_large"
    http_status = 413


class QuotaExceeded(TuneFleetError):
    """A per-user limit of the server; the message names it, the setting, and what to do."""

    code = "quota_exceeded"
    http_status = 429


class ServiceUnavailable(TuneFleetError):
    code = "service_unavailable"
    http_status = 503
    transient = True


class ProviderError(TuneFleetError):
    code = "provider_error"
    http_status = 502


class ProviderAuthFailed(ProviderError):
    """The provider refused the user's credentials: permanent until the user changes them."""

    code = "provider_auth_failed"
    http_status = 422


class ProviderTransient(ProviderError):
    """A 429, a 5xx, a time-out: worth retrying with back-off."""

    code = "provider_unavailable"
    transient = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class NoCapacity(ProviderError):
    code = "no_capacity"
    transient = True
