# mypy: disable-error-code="no-any-return"
# (a thin client: every call returns the decoded JSON of a response, typed by its docs)
"""A small synchronous Python client of the HTTP API (used by the CLI, adapters and the bench)."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["Client", "ClientError"]


class ClientError(Exception):
    """An error answer of the broker (or no answer at all: status 0, code ``unreachable``)."""

    def __init__(self, status: int, code: str, message: str, path: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (at {path})" if path else ""))
        self.status = status
        self.code = code
        self.message = message
        self.path = path


class Client:
    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise ClientError(
                0, "unreachable", f"cannot reach {self._http.base_url}: {exc}"
            ) from exc
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise ClientError(resp.status_code, err["code"], err["message"], err.get("path"))
            except (ValueError, KeyError, TypeError):
                raise ClientError(resp.status_code, "http_error", resp.text[:500]) from None
        if resp.status_code == 204 or not resp.content:
            return None
        if resp.headers.get("content-type", "").startswith("application/json"):
            return resp.json()
        return resp.content

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """Any API call; the decoded JSON answer (None for 204). Raises ClientError."""
        return self._call(method, path, **kw)

    # systems (admin token)
    def create_system(self, name: str) -> dict[str, Any]:
        return self._call("POST", "/v1/systems", json={"name": name})

    def list_systems(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/systems")["systems"]

    # mailboxes and subscriptions (system token)
    def create_mailbox(self, name: str, *, strict: bool = False, **options: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/mailboxes", json={"name": name, "strict": strict, **options})

    def list_mailboxes(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/mailboxes")["mailboxes"]

    def get_mailbox(self, mailbox_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/mailboxes/{mailbox_id}")

    def delete_mailbox(self, mailbox_id: str) -> None:
        self._call("DELETE", f"/v1/mailboxes/{mailbox_id}")

    def subscribe(
        self, mailbox_id: str, message_types: list[str], expression: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"message_types": message_types}
        if expression is not None:
            body["expression"] = expression
        return self._call("POST", f"/v1/mailboxes/{mailbox_id}/subscriptions", json=body)

    def list_subscriptions(self, mailbox_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/mailboxes/{mailbox_id}/subscriptions")["subscriptions"]

    def delete_subscription(self, mailbox_id: str, subscription_id: str) -> None:
        self._call("DELETE", f"/v1/mailboxes/{mailbox_id}/subscriptions/{subscription_id}")

    # sending
    def send(self, data: bytes, content_type: str = "application/json") -> dict[str, Any]:
        return self._call(
            "POST", "/v1/messages", content=data, headers={"Content-Type": content_type}
        )

    def send_batch(self, data: bytes, content_type: str = "application/json") -> dict[str, Any]:
        return self._call(
            "POST", "/v1/messages/batch", content=data, headers={"Content-Type": content_type}
        )

    # receiving
    def poll(
        self, mailbox_id: str, *, max: int = 10, wait: float = 0, lease: float | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"max": max, "wait": wait}
        if lease is not None:
            params["lease"] = lease
        timeout = httpx.Timeout(60.0 + wait)  # the server may hold a long poll for `wait` s
        return self._call(
            "GET", f"/v1/mailboxes/{mailbox_id}/messages", params=params, timeout=timeout
        )["deliveries"]

    def delivery_xml(self, mailbox_id: str, delivery_id: str) -> bytes:
        return self._call(
            "GET",
            f"/v1/mailboxes/{mailbox_id}/deliveries/{delivery_id}",
            headers={"Accept": "application/xml"},
        )

    def ack(self, mailbox_id: str, delivery_ids: list[str]) -> dict[str, Any]:
        return self._call(
            "POST", f"/v1/mailboxes/{mailbox_id}/ack", json={"delivery_ids": delivery_ids}
        )

    def nack(
        self, mailbox_id: str, delivery_ids: list[str], *, requeue: bool = True
    ) -> dict[str, Any]:
        return self._call(
            "POST",
            f"/v1/mailboxes/{mailbox_id}/nack",
            json={"delivery_ids": delivery_ids, "requeue": requeue},
        )

    def dead_letters(self, mailbox_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        return self._call(
            "GET", f"/v1/mailboxes/{mailbox_id}/dead-letters", params={"limit": limit}
        )["dead_letters"]

    def requeue_dead(self, mailbox_id: str, delivery_ids: list[str] | None = None) -> int:
        body = {"delivery_ids": delivery_ids or []}
        return self._call("POST", f"/v1/mailboxes/{mailbox_id}/dead-letters/requeue", json=body)[
            "requeued"
        ]

    def replay(self, mailbox_id: str, *, since_ms: int = 0) -> int:
        return self._call(
            "POST", f"/v1/mailboxes/{mailbox_id}/replay", json={"since_ms": since_ms}
        )["replayed"]

    def metrics(self) -> str:
        data = self._call("GET", "/metrics")
        return data.decode() if isinstance(data, bytes) else str(data)
