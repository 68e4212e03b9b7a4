"""Thin kopf handlers: every one of them calls :class:`Reconciler`.

They are registered into a registry built per operator (not kopf's process-wide default), so tests can run
several operators in one process without handlers leaking between them.

No handler makes kopf put a finalizer on a VoiceChat (no timers, daemons or deletion handlers; the periodic
check of an external LLM is the Reconciler's own task): deleting a
VoiceChat never needs the operator, so `helm uninstall` (which removes the operator's RBAC and Deployment
before the VoiceChat) and a deleted namespace leave nothing Terminating; garbage collection removes the
children through their owner references. Drift and status follow the children's watch events; a failed
apply is retried by :class:`Retries`, outside kopf's handler state, so the next spec edit runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from voicechat_operator import API_VERSION, GROUP, PLURAL, kinds
from voicechat_operator.kube import KubeApiError, KubeClient
from voicechat_operator.reconcile import INVALID_SPEC, Reconciler, controller_ref
from voicechat_operator.render import MANAGED_LABELS
from voicechat_operator.settings import OperatorSettings
from voicechat_operator.spec import InvalidSpecError

logger = logging.getLogger(__name__)


class Credentials:
    """The connection kopf logged in with, shared with the operator's own API client."""

    def __init__(self) -> None:
        self.current: kopf.ConnectionInfo | None = None

    def __call__(self) -> kopf.ConnectionInfo | None:
        return self.current


class Retries:
    """Re-runs the reconcile of a VoiceChat whose apply failed, with exponential backoff.

    A kopf handler that raised would be retried by kopf, but kopf also holds back every later change of that
    object until the retry is due (60 s by default): a fixed spec would wait. So handlers record the failure
    (status ``ApplyFailed``), return, and leave the retry to this class; a new spec cancels a pending retry.
    """

    def __init__(self, reconciler: Reconciler, first_delay_s: float, max_delay_s: float) -> None:
        self._reconciler = reconciler
        self._first_delay_s = first_delay_s
        self._max_delay_s = max_delay_s
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def schedule(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key not in self._tasks or self._tasks[key].done():
            self._tasks[key] = asyncio.create_task(self._retry(key), name=f"retry {namespace}/{name}")

    def cancel(self, namespace: str, name: str) -> None:
        task = self._tasks.pop((namespace, name), None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _retry(self, key: tuple[str, str]) -> None:
        namespace, name = key
        delay = self._first_delay_s
        while True:
            await asyncio.sleep(delay)
            try:
                body = await self._reconciler.client.get(kinds.VOICECHAT, namespace, name)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    break
                await self._reconciler.reconcile(body, force=True)
                logger.info("retry succeeded", extra={"voicechat": name, "namespace": namespace})
                break
            except InvalidSpecError:
                break  # the status says so; the next spec edit runs the update handler
            except KubeApiError as exc:
                delay = min(delay * 2, self._max_delay_s)
                logger.warning(
                    "retry failed",
                    extra={"voicechat": name, "namespace": namespace, "error": str(exc), "next_s": delay},
                )
        if self._tasks.get(key) is asyncio.current_task():
            del self._tasks[key]


def build_registry(operator_settings: OperatorSettings) -> kopf.OperatorRegistry:
    """A registry with the operator's handlers, configured by ``operator_settings``."""
    registry = kopf.OperatorRegistry()
    credentials = Credentials()
    reconciler = Reconciler(
        KubeClient(
            credentials,
            field_manager=operator_settings.field_manager,
            timeout_s=operator_settings.api_timeout_s,
        ),
        check_interval_s=operator_settings.llm_check_interval_s,
        check_timeout_s=operator_settings.llm_check_timeout_s,
    )

    retries = Retries(
        reconciler, operator_settings.retry_initial_delay_s, operator_settings.retry_max_delay_s
    )

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # No handler needs a finalizer, and kopf removes its finalizer from objects that carry one it no longer
        # needs: VoiceChats that an older operator (which had a timer) marked with this name are released.
        settings.persistence.finalizer = f"{GROUP}/kopf-timer"
        # Progress and the last handled spec live in annotations, so the CRD's status schema stays strict.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.networking.request_timeout = operator_settings.api_timeout_s
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a pod: the service account; elsewhere: $KUBECONFIG (read now, not at import time).
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        credentials.current = info
        return info

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        await retries.close()
        await reconciler.close()

    async def apply_spec(body: kopf.Body) -> None:
        meta = body["metadata"]
        retries.cancel(meta["namespace"], meta["name"])
        try:
            await reconciler.reconcile(body, force=True)
        except KubeApiError:
            retries.schedule(meta["namespace"], meta["name"])  # the status says ApplyFailed meanwhile
        except InvalidSpecError as exc:
            # Not retried: the status says InvalidSpec, `kubectl describe` shows the event; the next spec
            # change runs the update handler again.
            message = f"invalid spec, nothing applied: {exc}"
            kopf.warn(body, reason=INVALID_SPEC, message=message)
            raise kopf.PermanentError(message) from exc

    async def converge(body: kopf.Body) -> None:
        try:
            with contextlib.suppress(InvalidSpecError):  # already in the status
                await reconciler.reconcile(body, force=False)
        except KubeApiError:
            retries.schedule(body["metadata"]["namespace"], body["metadata"]["name"])

    @kopf.on.create(API_VERSION, PLURAL, registry=registry)
    async def created(body: kopf.Body, **_: Any) -> None:
        await apply_spec(body)

    @kopf.on.update(API_VERSION, PLURAL, registry=registry)
    async def updated(body: kopf.Body, **_: Any) -> None:
        await apply_spec(body)

    @kopf.on.resume(API_VERSION, PLURAL, registry=registry)
    async def resumed(body: kopf.Body, **_: Any) -> None:
        # After a restart: apply only what is missing or drifted, so nothing churns.
        await converge(body)

    async def child_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        try:
            await reconciler.child_changed(body, type)
        except KubeApiError as exc:
            ref, namespace = controller_ref(body), body["metadata"].get("namespace")
            logger.warning(
                "restoring a child failed", extra={"child": body["metadata"]["name"], "error": str(exc)}
            )
            if ref is not None and namespace:
                retries.schedule(namespace, ref["name"])

    for kind in kinds.CHILD_KINDS:
        kopf.on.event(
            kind.api_version, kind.plural, id=f"child-{kind.plural}", labels=MANAGED_LABELS, registry=registry
        )(child_event)

    return registry
