"""The few API calls the operator makes itself (kopf makes the watches): get, server-side apply, delete, status.

It rides on kopf's credentials (the connection a login handler produced), over the same aiohttp stack kopf
uses, so the operator has one way to reach the API server and one identity.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf

from voicechat_operator import OPERATOR_NAME
from voicechat_operator.kinds import Kind, kind_of

logger = logging.getLogger(__name__)

# The RBAC verbs each operation needs (rbac.required_rules is derived from this table).
OPERATION_VERBS: dict[str, tuple[str, ...]] = {
    "get": ("get",),
    # Server-side apply is a PATCH; when the object does not exist yet, the API server creates it.
    "apply": ("create", "patch"),
    "delete": ("delete",),
    # A JSON patch that replaces a drifted keyed list (port lists) before the apply; see reconcile.
    "replace_lists": ("patch",),
    "patch_status": ("patch",),
    # Generated Secrets: created when absent (never overwritten), missing keys added by a merge patch.
    "create": ("create",),
    "merge_patch": ("patch",),
}
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"  # a JSON body is valid YAML
MERGE_CONTENT_TYPE = "application/merge-patch+json"
JSON_PATCH_CONTENT_TYPE = "application/json-patch+json"


class KubeApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status


class KubeClient:
    """A small async client: one aiohttp session built from kopf's ``ConnectionInfo``."""

    def __init__(
        self,
        credentials: Callable[[], kopf.ConnectionInfo | None],
        *,
        field_manager: str = OPERATOR_NAME,
        timeout_s: float = 30.0,
    ) -> None:
        self._credentials = credentials
        self._field_manager = field_manager
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._session_lock = asyncio.Lock()

    async def _open(self) -> aiohttp.ClientSession:
        async with self._session_lock:
            if self._session is None or self._session.closed:
                info = self._credentials()
                if info is None:
                    raise KubeApiError(0, "-", "-", "no credentials yet (the login handler has not run)")
                headers = info.as_http_headers()
                headers.setdefault("User-Agent", OPERATOR_NAME)
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
                    headers=headers,
                    timeout=self._timeout,
                )
                self._server = info.server.rstrip("/")
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | list[dict[str, Any]] | None = None,
        content_type: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """The decoded JSON answer, or None for 404; other failures raise :class:`KubeApiError`."""
        session = await self._open()
        headers = {"Content-Type": content_type} if content_type else {}
        data = json.dumps(body) if body is not None else None
        async with session.request(
            method, self._server + path, data=data, headers=headers, params=params
        ) as rsp:
            if rsp.status == 404:
                return None
            text = await rsp.text()
            if rsp.status == 401:
                # Rotated service-account token: rebuild the session from fresh credentials next time.
                await self.close()
            if rsp.status >= 400:
                try:
                    message = json.loads(text).get("message", text)
                except ValueError:
                    message = text
                raise KubeApiError(rsp.status, method, path, str(message)[:2000])
            result: dict[str, Any] = json.loads(text) if text else {}
            return result

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._request("GET", kind.path(namespace, name))

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply with the operator's field manager, forcing ownership of every field it sets."""
        kind, meta = kind_of(dict(obj)), obj["metadata"]
        path = kind.path(meta.get("namespace"), meta["name"])
        params = {"fieldManager": self._field_manager, "force": "true"}
        result = await self._request("PATCH", path, body=obj, content_type=APPLY_CONTENT_TYPE, params=params)
        if result is None:  # 404 on apply: the resource type itself is not served (e.g. no PodMonitor CRD)
            raise KubeApiError(
                404, "PATCH", path, f"{kind.kind} ({kind.api_version}) is not served by this cluster"
            )
        return result

    async def replace_lists(
        self, kind: Kind, namespace: str, name: str, operations: list[dict[str, Any]]
    ) -> None:
        """A JSON patch (RFC 6902) under the operator's field manager, e.g. ``test`` + ``replace`` operations."""
        path = kind.path(namespace, name)
        params = {"fieldManager": self._field_manager}
        await self._request(
            "PATCH", path, body=operations, content_type=JSON_PATCH_CONTENT_TYPE, params=params
        )

    async def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        """Delete one object (background propagation); False if it was not there."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        path = kind.path(namespace, name)
        return await self._request("DELETE", path, body=body, content_type="application/json") is not None

    async def patch_status(self, kind: Kind, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource (lists such as conditions are replaced whole)."""
        path = kind.path(namespace, name, "status")
        await self._request("PATCH", path, body={"status": status}, content_type=MERGE_CONTENT_TYPE)

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create ``obj``; None when an object of that name already exists (409), which is left untouched."""
        kind, meta = kind_of(dict(obj)), obj["metadata"]
        path = kind.path(meta.get("namespace"))
        params = {"fieldManager": self._field_manager}
        try:
            return await self._request("POST", path, body=obj, content_type="application/json", params=params)
        except KubeApiError as exc:
            if exc.status == 409:
                return None
            raise

    async def merge_patch(self, kind: Kind, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """A JSON merge patch (RFC 7386) under the operator's field manager."""
        params = {"fieldManager": self._field_manager}
        await self._request(
            "PATCH", kind.path(namespace, name), body=patch, content_type=MERGE_CONTENT_TYPE, params=params
        )
