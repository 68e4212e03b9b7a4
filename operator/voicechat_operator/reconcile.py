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
from voicechat_operator.kube import KubeApiError, KubeClient
from voicechat_operator.render import (
    Owner,
    absent_children,
    endpoints,
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
                await self.client.apply(desired)
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
        for obj in render_children(owner, spec):
            kind, name = kinds.kind_of(obj), obj["metadata"]["name"]
            if not force:
                live = await self.client.get(kind, owner.namespace, name)
                if live is not None and is_subset(obj, live):
                    continue
            await self.client.apply(obj)
            applied.append(f"{kind.kind}/{name}")
        for kind, name in absent_children(owner, spec):
            live = await self.client.get(kind, owner.namespace, name)
            if live is not None and _owned_by(live, owner):
                await self.client.delete(kind, owner.namespace, name)
                applied.append(f"-{kind.kind}/{name}")
        if applied:
            logger.info("children applied", extra=_log_extra(owner, applied=applied, force=force))
        return applied

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
