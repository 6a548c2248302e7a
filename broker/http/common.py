"""Shared pieces of the HTTP layer: responses, the one error shape, auth and parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from quart import Response, request
from werkzeug.exceptions import HTTPException

from broker.codec import decode_struct
from broker.errors import BrokerError, InvalidInput
from broker.http.rawhttp import error_parts, internal_error_parts
from broker.service import Broker, Principal
from store.base import SystemRecord

__all__ = [
    "JSON_CT",
    "ErrorBody",
    "body_struct",
    "error_response",
    "http_exception_response",
    "internal_error_response",
    "json_response",
    "no_such_endpoint",
    "principal",
    "query_float",
    "query_int",
    "query_number",
    "system",
]

JSON_CT = "application/json"
_encoder = msgspec.json.Encoder()

_HTTP_CODES = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "too_large",
    415: "unsupported_media_type",
}


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    path: str | None = None


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = body if isinstance(body, bytes) else _encoder.encode(body)
    return Response(data, status=status, content_type=JSON_CT, headers=headers)


def error_response(err: BrokerError) -> Response:
    status, body, headers = error_parts(err)
    return json_response(body, status, headers)


def http_exception_response(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _HTTP_CODES.get(status, "internal" if status >= 500 else "invalid")
    message = exc.description or exc.name
    if status == 413:
        message = "request body too large"
    elif status in (404, 405):  # (WebSocket upgrades never reach Quart: broker/http/rawws.py)
        method, path = request.method, request.path
        message = (
            no_such_endpoint(method, path)
            if status == 404
            else f"method {method} is not allowed on {path}"
        )
    return json_response({"error": {"code": code, "message": message}}, status)


def no_such_endpoint(method: str, path: str) -> str:
    """The 404 message, for HTTP requests and WebSocket upgrades alike."""
    return f"no such endpoint: {method} {path}"


def internal_error_response() -> Response:
    """The answer to a bug: the one error shape, no details (those go to the log)."""
    status, body, _ = internal_error_parts()
    return json_response(body, status)


def principal(broker: Broker) -> Principal:
    return broker.authenticate(request.headers.get("Authorization"))


def system(broker: Broker) -> SystemRecord:
    return broker.system_of(request.headers.get("Authorization"))


async def body_struct(decoder: msgspec.json.Decoder[Any], *, empty_ok: bool = False) -> Any:
    """Decode a small JSON request body with a typed decoder (unknown fields refused)."""
    data = await request.get_data(cache=False)
    assert isinstance(data, bytes)
    if not data.strip():
        if empty_ok:
            data = b"{}"
        else:
            raise InvalidInput("a JSON request body is required", code="malformed")
    return decode_struct(data, decoder)


def query_number(
    args: Mapping[str, str], name: str, default: float, *, lo: float, hi: float, integer: bool
) -> float:
    """Query parameter ``name`` as an integer or a number in ``[lo, hi]`` (``default`` when
    absent or empty), for the HTTP and the stream routes alike; 400 ``invalid`` otherwise."""
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    kind = "an integer" if integer else "a number"
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise InvalidInput(f"query parameter {name} must be {kind}", path=f"query.{name}") from None
    if not lo <= value <= hi:
        raise InvalidInput(
            f"query parameter {name} must be between {lo:g} and {hi:g}", path=f"query.{name}"
        )
    return value


def query_int(name: str, default: int, *, lo: int, hi: int) -> int:
    return int(query_number(request.args, name, default, lo=lo, hi=hi, integer=True))


def query_float(name: str, default: float, *, lo: float, hi: float) -> float:
    return query_number(request.args, name, default, lo=lo, hi=hi, integer=False)
