"""The broker's one error hierarchy.

Every error a client can see carries a stable machine-readable ``code`` and the HTTP status
it maps to; the table :data:`ERROR_STATUS` is the single source of both. Messages name the
field and the rule that failed, and keep their inputs as attributes::

    BrokerError                      code -> http status, message, optional path
    ├── InvalidInput                 400: the request is malformed or fails validation
    │   ├── MalformedBody            400 ``malformed``: not parseable as the declared format
    │   └── InvalidEnvelope          400 ``invalid_envelope``: parsed, but breaks the model
    ├── Unauthorized                 401 ``unauthorized``: missing or unknown token
    ├── Forbidden                    403 ``forbidden``: token known, action not allowed
    ├── NotFound                     404 ``not_found`` (also: another system's mailbox)
    ├── Conflict                     409 ``conflict`` / ``lease_expired`` / ``unknown_delivery``
    ├── RequestTimeout               408 ``request_timeout``: the body did not arrive in time
    ├── PayloadTooLarge              413 ``too_large``
    ├── UnsupportedMediaType         415 ``unsupported_media_type``
    ├── Overloaded                   503 ``overloaded`` (with ``retry_after`` seconds)
    └── StoreError                   500 ``store_error``: the storage layer failed
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ERROR_STATUS",
    "BrokerError",
    "Conflict",
    "Forbidden",
    "InvalidEnvelope",
    "InvalidInput",
    "MalformedBody",
    "NotAcceptable",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "RequestTimeout",
    "StoreError",
    "Unauthorized",
    "UnsupportedMediaType",
]

#: Every stable error code and the HTTP status it is answered with.
ERROR_STATUS: dict[str, int] = {
    "malformed": 400,
    "invalid": 400,
    "invalid_envelope": 400,
    "invalid_expression": 400,
    "unknown_field": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "not_acceptable": 406,
    "conflict": 409,
    "lease_expired": 409,
    "unknown_delivery": 409,
    "request_timeout": 408,
    "too_large": 413,
    "unsupported_media_type": 415,
    "overloaded": 503,
    "shutting_down": 503,
    "store_error": 500,
    "internal": 500,
    # catalog and access control (catalog/, docs/catalog.md)
    "unknown_message_type": 422,
    "inactive_message_type": 422,
    "unknown_object_action": 422,
    "unknown_sensitivity": 422,
    "invalid_authority": 422,
    "unknown_authority": 422,
    "missing_authority": 403,
    "wildcard_authority": 403,
    "no_send_agreement": 403,
    "agreement_not_approved": 403,
    "authority_not_covered": 403,
    "sensitivity_not_covered": 403,
    "kle_not_covered": 403,
    "not_agreement_authority": 403,
    "agreement_state": 409,
    "no_receive_agreement": 403,
    "value_list_conflict": 409,
    "value_list_state": 409,
}


class BrokerError(Exception):
    """Root of every error the broker raises on purpose.

    Attributes:
        code: stable machine-readable code (a key of :data:`ERROR_STATUS`).
        message: human message naming the field and the rule.
        path: where in the input the problem is (``$.Beskedkuvert...``), if known.
    """

    default_code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, code: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        if self.code not in ERROR_STATUS:
            raise ValueError(f"unknown error code {self.code!r}")
        self.message = message
        self.path = path

    @property
    def http_status(self) -> int:
        return ERROR_STATUS[self.code]

    def to_dict(self) -> dict[str, str]:
        """The body of the one JSON error shape: ``{"error": <this>}``."""
        out = {"code": self.code, "message": self.message}
        if self.path is not None:
            out["path"] = self.path
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, path={self.path!r})"


class InvalidInput(BrokerError):
    default_code = "invalid"


class MalformedBody(InvalidInput):
    default_code = "malformed"


class InvalidEnvelope(InvalidInput):
    default_code = "invalid_envelope"


class Unauthorized(BrokerError):
    default_code = "unauthorized"


class Forbidden(BrokerError):
    default_code = "forbidden"


class NotFound(BrokerError):
    default_code = "not_found"


class Conflict(BrokerError):
    default_code = "conflict"


class RequestTimeout(BrokerError):
    default_code = "request_timeout"


class PayloadTooLarge(BrokerError):
    default_code = "too_large"


class UnsupportedMediaType(BrokerError):
    default_code = "unsupported_media_type"


class NotAcceptable(BrokerError):
    default_code = "not_acceptable"


class Overloaded(BrokerError):
    default_code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class StoreError(BrokerError):
    default_code = "store_error"
