"""Thin kopf handlers: every one of them calls :class:`Reconciler`.

They are registered into a registry built per operator (not kopf's process-wide default), so tests can run
several operators in one process without handlers leaking between them.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import kopf

from voicechat_operator import API_VERSION, GROUP, PLURAL, kinds
from voicechat_operator.kube import KubeClient
from voicechat_operator.reconcile import INVALID_SPEC, Reconciler
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


def build_registry(operator_settings: OperatorSettings) -> kopf.OperatorRegistry:
    """A registry with the operator's handlers, configured by ``operator_settings``."""
    registry = kopf.OperatorRegistry()
    credentials = Credentials()
    reconciler = Reconciler(
        KubeClient(
            credentials,
            field_manager=operator_settings.field_manager,
            timeout_s=operator_settings.api_timeout_s,
        )
    )

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf puts its finalizer on objects with timers (to stop them); name it after our group.
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
        await reconciler.client.close()

    async def apply_spec(body: kopf.Body) -> None:
        try:
            await reconciler.reconcile(body, force=True)
        except InvalidSpecError as exc:
            # Not retried: the status says InvalidSpec, `kubectl describe` shows the event; the next spec
            # change runs the update handler again.
            message = f"invalid spec, nothing applied: {exc}"
            kopf.warn(body, reason=INVALID_SPEC, message=message)
            raise kopf.PermanentError(message) from exc

    async def converge(body: kopf.Body) -> None:
        with contextlib.suppress(InvalidSpecError):  # already in the status; no event every tick
            await reconciler.reconcile(body, force=False)

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

    @kopf.timer(
        API_VERSION,
        PLURAL,
        interval=operator_settings.resync_interval_s,
        initial_delay=operator_settings.resync_interval_s,
        registry=registry,
    )
    async def resync(body: kopf.Body, **_: Any) -> None:
        await converge(body)

    async def child_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        await reconciler.child_changed(body, type)

    for kind in kinds.CHILD_KINDS:
        kopf.on.event(
            kind.api_version, kind.plural, id=f"child-{kind.plural}", labels=MANAGED_LABELS, registry=registry
        )(child_event)

    return registry
