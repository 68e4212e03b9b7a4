"""kmock's Kubernetes emulator, taught the API-server behaviour an operator relies on.

kmock 0.8 stores objects and streams watch events, but leaves out what the API server itself does. This
subclass adds it (see /work/shared/kubernetes-testing.md):

- server-set metadata: uid, resourceVersion, creationTimestamp, namespace, generation (bumped on spec change),
  names from generateName;
- server-side apply (``application/apply-patch+yaml``): create-or-update; fields the manager applied before
  and no longer applies are removed; other managers' fields are kept; a no-op apply changes nothing and emits
  no event (lists are atomic here; a real server merges associative lists such as containers by key);
- status subresources: writes to the main resource keep the stored status, ``/status`` writes change only it;
- custom resources: CRD defaults applied and the schema validated (422 otherwise);
- garbage collection of dependents through ownerReferences (uid) when the owner is deleted;
- watches resume from the resourceVersion of the list (kmock re-sends every object as ADDED, which makes
  kopf patch with stale versions), and honour label selectors, as lists do;
- 404 for resource types that are not declared.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import re
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import aiohttp.web
import attrs
import jsonschema
import kmock
from kmock._internal import dicts  # merge and JSON patch as kmock applies them (pinned kmock==0.8)

from tests.support.kube_schema import apply_defaults, storage_schema, to_jsonschema

APPLY = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
Key = tuple[kmock.resource, str | None, str]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _without(obj: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


def _prune(target: dict[str, Any], before: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Remove from ``target`` what a manager applied ``before`` but no longer applies ``now``."""
    for key, old in before.items():
        if key not in now:
            target.pop(key, None)
        elif isinstance(old, Mapping) and isinstance(now[key], Mapping) and isinstance(target.get(key), dict):
            _prune(target[key], old, now[key])


def _merge(target: dict[str, Any], applied: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in applied.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


_SELECTOR_TERM = re.compile(
    r"\s*(?P<neg>!)?(?P<key>[\w./-]+)\s*(?:(?P<op>==|=|!=|\bin\b|\bnotin\b)\s*(?P<value>\([^)]*\)|[\w./-]*))?\s*"
)


def _split_selector(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    return [t for t in [*terms, current] if t.strip()]


def matches_label_selector(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector syntax: =, ==, !=, in (…), notin (…), key, !key."""
    for term in _split_selector(selector or ""):
        match = _SELECTOR_TERM.fullmatch(term)
        if match is None:
            raise kmock.KubernetesError(
                status=400, reason="BadRequest", message=f"bad label selector: {term!r}"
            )
        key, op, value = match["key"], match["op"], match["value"]
        if op is None:
            if (key in labels) == bool(match["neg"]):
                return False
        elif op in ("=", "=="):
            if labels.get(key) != value:
                return False
        elif op == "!=":
            if labels.get(key) == value:
                return False
        else:
            values = {v.strip() for v in (value or "").strip("()").split(",")}
            if (labels.get(key) in values) != (op == "in"):
                return False
    return True


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """A stateful in-memory API server for operator tests (use as ``async with`` plus ``kmock.Server``)."""

    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1000), init=False)
    _applied: dict[tuple[Key, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    _crd_schemas: dict[kmock.resource, dict[str, Any]] = attrs.field(factory=dict, init=False)
    # Every watch event per resource with its resourceVersion, so watches can resume where a list ended.
    _events: defaultdict[kmock.resource, list[tuple[int, dict[str, Any]]]] = attrs.field(
        factory=lambda: defaultdict(list), init=False
    )
    _changed: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)
    # Namespaces that exist (kmock 0.8 cannot parse /api/v1/namespaces; served here instead).
    namespaces: set[str] = attrs.field(factory=lambda: {"default", "kube-system"})

    # --- declarations -----------------------------------------------------------------------------------

    def declare_crd(self, crd: Mapping[str, Any]) -> kmock.resource:
        """Serve a CustomResourceDefinition: discovery, status subresource, defaults and validation."""
        spec = crd["spec"]
        (version,) = [v for v in spec["versions"] if v.get("storage")]
        resource = kmock.resource(
            group=spec["group"], version=version["name"], plural=spec["names"]["plural"]
        )
        self.resources[resource] = kmock.ResourceInfo(
            kind=spec["names"]["kind"],
            singular=spec["names"].get("singular"),
            namespaced=spec["scope"] == "Namespaced",
            shortnames=set(spec["names"].get("shortNames", [])),
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
            subresources=set(version.get("subresources", {})),
        )
        if "schema" in version:
            self._crd_schemas[resource] = storage_schema(dict(crd))
        return resource

    def get_object(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object (a copy), or None."""
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    # --- namespaces (kmock's path parser fails on the cluster-scoped core collection) ------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.method == "GET" and raw_request.path.rstrip("/") == "/api/v1/namespaces":
            return await self._serve_namespaces(raw_request)
        return await super().__call__(raw_request)

    def _namespace_objects(self) -> list[dict[str, Any]]:
        return [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": name,
                    "labels": {"kubernetes.io/metadata.name": name},
                    "resourceVersion": "1",
                },
                "status": {"phase": "Active"},
            }
            for name in sorted(self.namespaces)
        ]

    async def _serve_namespaces(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.query.get("watch") != "true":
            return aiohttp.web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "NamespaceList",
                    "metadata": {"resourceVersion": "1"},
                    "items": self._namespace_objects(),
                }
            )
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw_request)
        if raw_request.query.get("resourceVersion") is None:
            for obj in self._namespace_objects():
                await response.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
        await asyncio.Event().wait()  # namespaces never change here; the client closes the stream
        return response

    # --- reads: label selectors ------------------------------------------------------------------------

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        result = await super()._serve_list(request)
        assert isinstance(result, dict)
        selector = request.params.get("labelSelector")
        result["items"] = [
            item
            for item in result["items"]
            if matches_label_selector(selector, item.get("metadata", {}).get("labels") or {})
        ]
        result["metadata"] = {"resourceVersion": str(next(self._versions))}
        return result

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        """Events after the client's resourceVersion (a real server replays from there), then live ones."""
        yield b""  # send the headers: the stream is open even if nothing happens
        assert request.resource is not None
        selector = request.params.get("labelSelector")
        since = request.params.get("resourceVersion")
        position = 0
        if since and since.isdigit():
            log = self._events[request.resource]
            position = next((i for i, (rv, _) in enumerate(log) if rv > int(since)), len(log))
        else:  # no resourceVersion: the current objects first, as ADDED
            async with self._lock:
                position = len(self._events[request.resource])
                current = [
                    copy.deepcopy(obj.raw)
                    for (resource, namespace, _), obj in self.objects.items()
                    if resource == request.resource
                    and not obj.deleted
                    and (request.namespace is None or namespace == request.namespace)
                ]
            for obj in current:
                if matches_label_selector(selector, obj.get("metadata", {}).get("labels") or {}):
                    yield {"type": "ADDED", "object": obj}
        log = self._events[request.resource]
        while True:
            async with self._changed:
                while len(log) <= position:
                    await self._changed.wait()
                pending, position = log[position:], len(log)
            for _, event in pending:
                meta = event["object"].get("metadata", {})
                if request.namespace is not None and meta.get("namespace") != request.namespace:
                    continue
                if matches_label_selector(selector, meta.get("labels") or {}):
                    yield copy.deepcopy(event)

    # --- writes -----------------------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None or request.action not in (
            kmock.action.CREATE,
            kmock.action.UPDATE,
            kmock.action.DELETE,
        ):
            return await super()._handle(request)
        if request.resource not in self.resources:
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            if request.action == kmock.action.CREATE:
                obj, status = await self._create(
                    request.resource, request.namespace, dict(request.data or {})
                )
            elif request.action == kmock.action.UPDATE:
                obj, status = await self._update(request)
            else:
                obj, status = await self._delete(request.resource, request.namespace, request.name or "")
        return aiohttp.web.json_response(obj, status=status)

    def _key(self, resource: kmock.resource, namespace: str | None, name: str) -> Key:
        namespaced = self.resources[resource].namespaced
        return (resource, namespace if namespaced is not False else None, name)

    def _live(self, key: Key) -> dict[str, Any] | None:
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def _has_status(self, resource: kmock.resource) -> bool:
        return "status" in self.resources[resource].subresources

    def _admit(self, resource: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
        schema = self._crd_schemas.get(resource)
        if schema is None:
            return obj
        obj = apply_defaults(schema, obj)
        try:
            jsonschema.validate(obj, to_jsonschema(schema, strict=False))
        except jsonschema.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path)
            raise kmock.KubernetesError(
                status=422, reason="Invalid", message=f"{path}: {exc.message}"
            ) from exc
        return obj

    async def _store(self, key: Key, obj: dict[str, Any], event: str) -> None:
        if key in self.objects:
            self.objects[key].create(obj)  # a new version replaces the old (history kept for assertions)
        else:
            self.objects[key] = obj
        await self._publish(key[0], event, obj)

    async def _publish(self, resource: kmock.resource, event: str, obj: dict[str, Any]) -> None:
        version = int(obj["metadata"]["resourceVersion"])
        async with self._changed:
            self._events[resource].append((version, {"type": event, "object": copy.deepcopy(obj)}))
            self._changed.notify_all()

    async def _create(
        self, resource: kmock.resource, namespace: str | None, obj: dict[str, Any], manager: str | None = None
    ) -> tuple[dict[str, Any], int]:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise kmock.KubernetesError(status=422, reason="Invalid", message="metadata.name: Required value")
        key = self._key(resource, namespace or meta.get("namespace"), meta["name"])
        if self._live(key) is not None:
            raise kmock.KubernetesError(status=409, reason="AlreadyExists", message=f"{meta['name']} exists")
        if self._has_status(resource):
            obj.pop("status", None)
        obj = self._admit(resource, obj)
        meta = obj["metadata"]
        if key[1] is not None:
            meta["namespace"] = key[1]
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=str(next(self._versions)),
            creationTimestamp=_now(),
            generation=1,
        )
        if manager is not None:
            meta["managedFields"] = [{"manager": manager, "operation": "Apply"}]
        await self._store(key, obj, "ADDED")
        return obj, 201

    async def _update(self, request: kmock.Request) -> tuple[dict[str, Any], int]:
        assert request.resource is not None
        assert request.name is not None
        resource, key = request.resource, self._key(request.resource, request.namespace, request.name)
        content_type = next((v for k, v in request.headers.items() if k.lower() == "content-type"), "")
        content_type = content_type.split(";")[0].strip()
        data = request.data
        live = self._live(key)
        if content_type == APPLY:
            manager = request.params.get("fieldManager")
            if not manager:
                raise kmock.KubernetesError(
                    status=422, reason="Invalid", message="fieldManager is required for apply"
                )
            if request.params.get("force") != "true":
                raise kmock.KubernetesError(
                    status=409, reason="Conflict", message="this emulator needs force=true"
                )
            applied = dict(data or {})
            if live is None:
                created, status = await self._create(
                    resource, request.namespace, copy.deepcopy(applied), manager
                )
                self._applied[(key, manager)] = applied
                return created, status
            new = copy.deepcopy(live)
            _prune(new, self._applied.get((key, manager), {}), applied)
            new = _merge(new, applied)
            self._applied[(key, manager)] = applied
        elif live is None:
            raise kmock.KubernetesObjectNotFoundError()
        elif content_type == JSON_PATCH or isinstance(data, list):
            try:
                new = dict(dicts.json_patch_dict(live, data))
            except Exception as exc:  # e.g. a failed "test" op on resourceVersion: the API server says 422
                raise kmock.KubernetesError(status=422, reason="Invalid", message=repr(exc)) from exc
        else:
            new = dict(dicts.merge_patch_dict(live, data or {}))

        if request.subresource == "status":
            new = {**live, "status": new.get("status")}
        elif self._has_status(resource):
            new = {k: v for k, v in new.items() if k != "status"}
            if "status" in live:
                new["status"] = live["status"]
        if request.subresource != "status":
            new = self._admit(resource, new)
        # Identity and server-owned metadata are not the client's to change.
        for field in ("uid", "creationTimestamp", "generation", "namespace", "name"):
            if field in live["metadata"]:
                new["metadata"][field] = live["metadata"][field]
        new["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        if new == live:
            return live, 200  # a no-op write: no new resourceVersion, no watch event
        if _without(new, "metadata", "status") != _without(live, "metadata", "status"):
            new["metadata"]["generation"] = int(live["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = str(next(self._versions))
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._remove(key, new)
            return new, 200
        await self._store(key, new, "MODIFIED")
        return new, 200

    async def _delete(
        self, resource: kmock.resource, namespace: str | None, name: str
    ) -> tuple[dict[str, Any], int]:
        key = self._key(resource, namespace, name)
        live = self._live(key)
        if live is None:
            raise kmock.KubernetesObjectNotFoundError()
        meta = live["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["resourceVersion"] = str(next(self._versions))
                await self._store(key, live, "MODIFIED")
            return live, 202
        await self._remove(key, live)
        return live, 200

    async def _remove(self, key: Key, obj: dict[str, Any]) -> None:
        self.objects[key].delete()
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        await self._publish(key[0], "DELETED", obj)
        await self._collect_dependents(obj["metadata"].get("uid"))

    async def _collect_dependents(self, uid: str | None) -> None:
        """Background cascading deletion: what the garbage collector does for owner references."""
        if not uid:
            return
        for key in list(self.objects):
            dependent = self._live(key)
            refs = (dependent or {}).get("metadata", {}).get("ownerReferences") or []
            if dependent is not None and any(ref.get("uid") == uid for ref in refs):
                await self._delete(key[0], key[1], key[2])


async def kube_request(
    server: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    content_type: str = "application/merge-patch+json",
    params: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    """One HTTP request to the emulator as a client (kubectl edit, a controller) would make it."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            server.rstrip("/") + path,
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": content_type},
            params=params,
        ) as rsp,
    ):
        text = await rsp.text()
        return rsp.status, json.loads(text) if text else None
