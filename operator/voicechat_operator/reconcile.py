"""One idempotent reconcile for create, resume, update, timer and child events.

Spec → typed model → rendered children → server-side apply → status observed from the child Deployments.
An invalid spec applies nothing (no partial rollout) and says why in the ``Ready`` condition.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from voicechat_operator import API_VERSION, KIND, kinds
from voicechat_operator.generated import ensure_secret
from voicechat_operator.kube import KubeApiError, KubeClient
from voicechat_operator.render import (
    Owner,
    absent_children,
    endpoints,
    generated_secrets,
    llm_name,
    render_children,
    session_name,
)
from voicechat_operator.spec import InvalidSpecError, VoiceChatSpec, parse_spec
from voicechat_operator.status import build_status, status_changed

logger = logging.getLogger(__name__)

INVALID_SPEC = "InvalidSpec"
APPLY_FAILED = "ApplyFailed"


def is_subset(desired: Any, actual: Any) -> bool:
    """Whether every field the operator sets has that value in the live object (extra live fields are fine).

    Live objects carry server defaults and other managers' fields; only a difference in what the operator
    renders is drift.
    """
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and is_subset(value, actual[key]) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(desired) == len(actual)
            and all(is_subset(d, a) for d, a in zip(desired, actual, strict=True))
        )
    return bool(desired == actual)


# Lists the API server merges by a key other than the name (server-side apply "map" lists): an entry whose key
# another manager changed is a different entry, so a forced apply adds ours beside it and the duplicate name
# is rejected (422 ... Duplicate value: "http"). Such a list is replaced by a JSON patch first.
PORT_KEYS = {"port", "containerPort"}


def _port_key(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    number = next((entry[k] for k in sorted(PORT_KEYS) if k in entry), None)
    return number, entry.get("protocol", "TCP")


def _keys_differ(desired: list[Any], live: Any) -> bool:
    if not isinstance(live, list):
        return True
    return sorted(map(_port_key, desired)) != sorted(map(_port_key, live)) or len(desired) != len(live)


def port_list_repairs(desired: Mapping[str, Any], live: Mapping[str, Any]) -> list[dict[str, Any]]:
    """JSON patch operations that put back the port lists of ``desired`` whose keys drifted in ``live``.

    Covers a Service's ``spec.ports`` and each container's ``ports`` in a pod template (containers matched
    by name). Empty when no keyed list drifted (a forced apply repairs every other field). The first
    operation tests the resourceVersion, so a concurrent change makes the patch fail instead of clobbering it.
    """
    operations: list[dict[str, Any]] = []
    spec, live_spec = desired.get("spec") or {}, live.get("spec") or {}
    if (
        desired.get("kind") == "Service"
        and "ports" in spec
        and _keys_differ(spec["ports"], live_spec.get("ports"))
    ):
        operations.append({"op": "replace", "path": "/spec/ports", "value": spec["ports"]})
    pod = (spec.get("template") or {}).get("spec") or {}
    live_containers = ((live_spec.get("template") or {}).get("spec") or {}).get("containers") or []
    for container in pod.get("containers") or []:
        index = next((i for i, c in enumerate(live_containers) if c.get("name") == container["name"]), None)
        if index is None or "ports" not in container:
            continue  # a missing container is added by the apply itself
        if _keys_differ(container["ports"], live_containers[index].get("ports")):
            path = f"/spec/template/spec/containers/{index}/ports"
            operations.append({"op": "replace", "path": path, "value": container["ports"]})
    if not operations:
        return []
    version = live.get("metadata", {}).get("resourceVersion")
    return [{"op": "test", "path": "/metadata/resourceVersion", "value": version}, *operations]


def owner_of(body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def controller_ref(child: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The VoiceChat owner reference of a child, if it has one."""
    for ref in child.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("apiVersion") == API_VERSION and ref.get("kind") == KIND and ref.get("controller"):
            return dict(ref)
    return None


def _owned_by(obj: Mapping[str, Any], owner: Owner) -> bool:
    ref = controller_ref(obj)
    return ref is not None and ref.get("uid") == owner.uid


def _log_extra(owner: Owner, **fields: Any) -> dict[str, Any]:
    return {"voicechat": owner.name, "namespace": owner.namespace, **fields}


class Reconciler:
    """Holds the API client and one lock per VoiceChat so that its handlers never interleave."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    def _lock(self, owner: Owner) -> asyncio.Lock:
        return self._locks[(owner.namespace, owner.name)]

    async def reconcile(self, body: Mapping[str, Any], *, force: bool) -> list[str]:
        """Converge the children of the VoiceChat ``body`` and write its status; returns what was applied.

        ``force`` applies every child (a spec change); otherwise only missing or drifted children are
        applied, so a restart or a timer tick writes nothing when nothing changed.
        Raises :class:`InvalidSpecError` after recording ``InvalidSpec`` (nothing applied), and
        :class:`KubeApiError` after recording ``ApplyFailed`` in the status (kopf retries).
        """
        owner = owner_of(body)
        meta, previous = body["metadata"], body.get("status")
        generation = meta.get("generation")
        async with self._lock(owner):
            try:
                spec = parse_spec(owner.name, body.get("spec") or {})
            except InvalidSpecError as exc:
                logger.warning(
                    "invalid spec: nothing applied", extra=_log_extra(owner, problems=exc.problems)
                )
                await self._write_status(owner, generation, None, (INVALID_SPEC, str(exc)), previous)
                raise
            try:
                applied = await self._converge(owner, spec, force=force)
            except KubeApiError as exc:
                logger.error("apply failed", extra=_log_extra(owner, error=str(exc)))
                await self._write_status(
                    owner, generation, endpoints(owner), (APPLY_FAILED, str(exc)), previous
                )
                raise
            await self._write_status(owner, generation, endpoints(owner), None, previous)
            return applied

    async def child_changed(self, child: Mapping[str, Any], event_type: str | None) -> list[str]:
        """A child was added, modified or deleted: restore it if it drifted, refresh status on Deployments."""
        ref = controller_ref(child)
        namespace = child.get("metadata", {}).get("namespace")
        if ref is None or not namespace:
            return []
        # Read the owner under its lock, so its status is not stale against a reconcile that just ran.
        async with self._locks[(namespace, ref["name"])]:
            body = await self.client.get(kinds.VOICECHAT, namespace, ref["name"])
            meta = (body or {}).get("metadata", {})
            if body is None or meta.get("uid") != ref.get("uid") or meta.get("deletionTimestamp"):
                return []  # the owner is gone or going: garbage collection takes the children
            owner = owner_of(body)
            try:
                spec = parse_spec(owner.name, body.get("spec") or {})
            except InvalidSpecError:
                return []  # the status already says InvalidSpec; leave the children as they were
            kind = kinds.kind_of(dict(child))
            name = child["metadata"]["name"]
            wanted = {
                (kinds.kind_of(obj), obj["metadata"]["name"]): obj for obj in render_children(owner, spec)
            }
            desired = wanted.get((kind, name))
            applied: list[str] = []
            if desired is not None and (event_type == "DELETED" or not is_subset(desired, child)):
                logger.info(
                    "child drifted: restoring",
                    extra=_log_extra(owner, kind=kind.kind, child=name, event=event_type or "LISTED"),
                )
                await self._apply(desired, None if event_type == "DELETED" else child)
                applied.append(f"{kind.kind}/{name}")
            previous = body.get("status") or {}
            # Only a full reconcile of the spec advances observedGeneration; until one has run, it writes status.
            if kind is kinds.DEPLOYMENT and previous.get("observedGeneration") is not None:
                await self._write_status(
                    owner, previous["observedGeneration"], endpoints(owner), None, previous
                )
            return applied

    async def _converge(self, owner: Owner, spec: VoiceChatSpec, *, force: bool) -> list[str]:
        applied = []
        # Before the pods that read them: a pod whose secretKeyRef is missing does not start.
        for secret in generated_secrets(owner, spec):
            done = await ensure_secret(self.client, owner, secret)
            if done is not None:
                applied.append(f"Secret/{secret.name} ({done})")
        for obj in render_children(owner, spec):
            kind, name = kinds.kind_of(obj), obj["metadata"]["name"]
            live = None
            if not force:
                live = await self.client.get(kind, owner.namespace, name)
                if live is not None and is_subset(obj, live):
                    continue
            await self._apply(obj, live)
            applied.append(f"{kind.kind}/{name}")
        for kind, name in absent_children(owner, spec):
            live = await self.client.get(kind, owner.namespace, name)
            if live is not None and _owned_by(live, owner):
                await self.client.delete(kind, owner.namespace, name)
                applied.append(f"-{kind.kind}/{name}")
        if applied:
            logger.info("children applied", extra=_log_extra(owner, applied=applied, force=force))
        return applied

    async def _apply(self, desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> None:
        """Server-side apply ``desired``, first replacing port lists whose keys drifted in ``live``.

        Without ``live`` (a forced apply), the object is read only when the apply is rejected as invalid.
        """
        kind, meta = kinds.kind_of(dict(desired)), desired["metadata"]
        if live is not None:
            await self._replace_drifted_lists(kind, desired, live)
        try:
            await self.client.apply(desired)
        except KubeApiError as exc:
            if exc.status != 422 or live is not None:
                raise
            current = await self.client.get(kind, meta["namespace"], meta["name"])
            if current is None or not await self._replace_drifted_lists(kind, desired, current):
                raise
            await self.client.apply(desired)

    async def _replace_drifted_lists(
        self, kind: kinds.Kind, desired: Mapping[str, Any], live: Mapping[str, Any]
    ) -> bool:
        operations = port_list_repairs(desired, live)
        if operations:
            meta = desired["metadata"]
            logger.info(
                "port list drifted: replacing it",
                extra={"namespace": meta["namespace"], "child": meta["name"], "kind": kind.kind,
                       "paths": [op["path"] for op in operations[1:]]},
            )  # fmt: skip
            await self.client.replace_lists(kind, meta["namespace"], meta["name"], operations)
        return bool(operations)

    async def _write_status(
        self,
        owner: Owner,
        generation: int | None,
        urls: Mapping[str, str] | None,
        problem: tuple[str, str] | None,
        previous: Mapping[str, Any] | None,
    ) -> None:
        llm = await self.client.get(kinds.DEPLOYMENT, owner.namespace, llm_name(owner))
        sessions = await self.client.get(kinds.DEPLOYMENT, owner.namespace, session_name(owner))
        new = build_status(
            generation=generation,
            llm_deployment=llm if llm is not None and _owned_by(llm, owner) else None,
            session_deployment=sessions if sessions is not None and _owned_by(sessions, owner) else None,
            endpoints=urls,
            problem=problem,
            previous=previous,
        )
        if status_changed(new, previous):
            await self.client.patch_status(kinds.VOICECHAT, owner.namespace, owner.name, new)
