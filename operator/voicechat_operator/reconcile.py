"""One idempotent reconcile for create, resume, update, timer and child events.

Spec → typed model → rendered children → server-side apply → status observed from the child Deployments.
An invalid spec applies nothing (no partial rollout) and says why in the ``Ready`` condition.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from voicechat_operator import API_VERSION, KIND, kinds
from voicechat_operator.generated import ensure_secret
from voicechat_operator.kube import KubeApiError, KubeClient
from voicechat_operator.probe import SECRET_MISSING, CheckResult, check_openai_endpoint, secret_value
from voicechat_operator.render import (
    Owner,
    absent_children,
    endpoints,
    generated_secrets,
    llm_api_key_ref,
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
    return first_difference(desired, actual) is None


def first_difference(desired: Any, actual: Any, path: str = "") -> str | None:
    """The path of the first field of ``desired`` that ``actual`` lacks or holds otherwise; None if none does."""
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return path or "/"
        for key, value in desired.items():
            if key not in actual:
                return f"{path}/{key}"
            found = first_difference(value, actual[key], f"{path}/{key}")
            if found is not None:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return path or "/"
        for index, (d, a) in enumerate(zip(desired, actual, strict=True)):
            found = first_difference(d, a, f"{path}/{index}")
            if found is not None:
                return found
        return None
    return None if desired == actual else path or "/"


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


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Reconciler:
    """Holds the API client and one lock per VoiceChat so that its handlers never interleave.

    For external LLM engines it also checks the endpoint (``GET {url}/models``): at every spec change, and
    every ``check_interval_s`` from a background task per VoiceChat (not a kopf timer: timers make kopf put a
    finalizer on the VoiceChat, see handlers). Child events reuse the last result while it is that fresh.
    """

    def __init__(
        self, client: KubeClient, *, check_interval_s: float = 60.0, check_timeout_s: float = 5.0
    ) -> None:
        self.client = client
        self.check_interval_s = check_interval_s
        self.check_timeout_s = check_timeout_s
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        # (namespace, name) -> (what was checked, result, monotonic time of the check)
        self._checks: dict[tuple[str, str], tuple[tuple[Any, ...], CheckResult, float]] = {}
        self._rechecks: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def close(self) -> None:
        tasks = list(self._rechecks.values())
        self._rechecks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.close()

    async def llm_check(self, owner: Owner, spec: VoiceChatSpec, *, fresh: bool) -> CheckResult | None:
        """The external endpoint's check result (None for other engines); ``fresh`` probes now."""
        llm = spec.llm
        if llm.engine != "external" or llm.url is None or llm.model is None:
            return None
        key = (owner.uid, llm.url, llm.model, llm_api_key_ref(owner, spec))
        cached = self._checks.get((owner.namespace, owner.name))
        if (
            not fresh
            and cached is not None
            and cached[0] == key
            and time.monotonic() - cached[2] < self.check_interval_s
        ):
            return cached[1]
        result = await self._check_external(owner, spec, llm.url, llm.model)
        self._checks[(owner.namespace, owner.name)] = (key, result, time.monotonic())
        # Logged when the outcome changes, not at every periodic check.
        changed = cached is None or cached[0] != key or cached[1].reason != result.reason
        log = (logger.info if result.ok else logger.warning) if changed else logger.debug
        log(
            "external LLM checked",
            extra=_log_extra(
                owner, reason=result.reason, latency_ms=result.latency_ms, detail=result.message
            ),
        )
        return result

    async def _check_external(self, owner: Owner, spec: VoiceChatSpec, url: str, model: str) -> CheckResult:
        api_key = None
        ref = llm_api_key_ref(owner, spec)
        if ref is not None:
            name, key = ref
            try:
                secret = await self.client.get(kinds.SECRET, owner.namespace, name)
            except KubeApiError as exc:
                return CheckResult(False, SECRET_MISSING, f"cannot read Secret {name}: {exc}", None, _now())
            api_key = secret_value(secret, key)
            if api_key is None:
                what = (
                    f"Secret {name} does not exist" if secret is None else f"Secret {name} has no key {key!r}"
                )
                return CheckResult(False, SECRET_MISSING, f"llm.apiKeySecret: {what}", None, _now())
        return await check_openai_endpoint(url, model, api_key, timeout_s=self.check_timeout_s, now=_now())

    def _schedule_recheck(self, owner: Owner, spec: VoiceChatSpec) -> None:
        key = (owner.namespace, owner.name)
        if spec.llm.engine != "external":
            self._checks.pop(key, None)
            return  # a running task sees the engine change and ends
        task = self._rechecks.get(key)
        if task is None or task.done():
            self._rechecks[key] = asyncio.create_task(
                self._recheck_loop(key), name=f"llm check {key[0]}/{key[1]}"
            )

    async def _recheck_loop(self, key: tuple[str, str]) -> None:
        namespace, name = key
        try:
            while True:
                await asyncio.sleep(self.check_interval_s)
                try:
                    if not await self._recheck(namespace, name):
                        break
                except KubeApiError as exc:  # the API server is unavailable: try again next time
                    logger.warning(
                        "LLM re-check failed",
                        extra={"voicechat": name, "namespace": namespace, "error": str(exc)},
                    )
        finally:
            if self._rechecks.get(key) is asyncio.current_task():
                del self._rechecks[key]
                self._checks.pop(key, None)

    async def _recheck(self, namespace: str, name: str) -> bool:
        """Check the endpoint again and write the status; False when the VoiceChat no longer needs checks."""
        async with self._locks[(namespace, name)]:
            body = await self.client.get(kinds.VOICECHAT, namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return False
            owner = owner_of(body)
            try:
                spec = parse_spec(owner.name, body.get("spec") or {})
            except InvalidSpecError:
                return False  # the next valid spec schedules checks again
            if spec.llm.engine != "external":
                return False
            previous = body.get("status") or {}
            if previous.get("observedGeneration") is None:
                return True  # no full reconcile yet: it writes the first status
            check = await self.llm_check(owner, spec, fresh=True)
            await self._write_status(
                owner, previous["observedGeneration"], endpoints(owner, spec), None, previous, spec, check
            )
            return True

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
            urls = endpoints(owner, spec)
            try:
                applied = await self._converge(owner, spec, force=force)
            except KubeApiError as exc:
                logger.error("apply failed", extra=_log_extra(owner, error=str(exc)))
                await self._write_status(owner, generation, urls, (APPLY_FAILED, str(exc)), previous, spec)
                raise
            # A spec change (force) checks an external endpoint anew; a resume reuses a fresh-enough result.
            check = await self.llm_check(owner, spec, fresh=force)
            await self._write_status(owner, generation, urls, None, previous, spec, check)
            self._schedule_recheck(owner, spec)
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
                # The event may predate our own last apply (kopf hands over events queued while a handler
                # ran, e.g. the controller's status updates of a Deployment still at a scaled replica count,
                # or of an older pod template): judge drift on the object as it is now, so a stale event
                # writes nothing.
                live = await self.client.get(kind, namespace, name)
                if live is None or not is_subset(desired, live):
                    logger.info(
                        "child drifted: restoring",
                        extra=_log_extra(
                            owner,
                            kind=kind.kind,
                            child=name,
                            event=event_type or "LISTED",
                            field=None if live is None else first_difference(desired, live),
                        ),
                    )
                    await self._apply(desired, live)
                    applied.append(f"{kind.kind}/{name}")
            previous = body.get("status") or {}
            # Only a full reconcile of the spec advances observedGeneration; until one has run, it writes status.
            if kind is kinds.DEPLOYMENT and previous.get("observedGeneration") is not None:
                check = await self.llm_check(owner, spec, fresh=False)
                await self._write_status(
                    owner, previous["observedGeneration"], endpoints(owner, spec), None, previous, spec, check
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
        spec: VoiceChatSpec | None = None,
        check: CheckResult | None = None,
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
            engine=spec.llm.engine if spec is not None else None,
            llm_check=check,
        )
        if status_changed(new, previous):
            await self.client.patch_status(kinds.VOICECHAT, owner.namespace, owner.name, new)
