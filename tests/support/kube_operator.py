"""Run the real operator (kopf with our registry) in-process against the extended kmock emulator."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import kopf
import yaml

from tests.support.kube_emulator import KubeEmulator, kube_request
from tests.support.kube_schema import load_crd
from voicechat_common.localstack import free_port
from voicechat_operator import kinds
from voicechat_operator.main import kopf_options
from voicechat_operator.settings import OperatorSettings

POD_MONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podmonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"kind": "PodMonitor", "plural": "podmonitors", "singular": "podmonitor"},
        "versions": [{"name": "v1", "served": True, "storage": True}],
    },
}


def resource_of(kind: kinds.Kind) -> kmock.resource:
    return kmock.resource(group=kind.group, version=kind.version, plural=kind.plural)


@dataclass
class Cluster:
    """The emulated API server plus small client helpers for tests."""

    emulator: KubeEmulator
    server: str

    def get(self, kind: kinds.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        return self.emulator.get_object(resource_of(kind), namespace, name)

    async def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, payload = await kube_request(self.server, method, path, body, **kwargs)
        assert status < 400, (method, path, status, payload)
        return payload

    async def merge_patch(
        self, kind: kinds.Kind, namespace: str, name: str, patch: Any, subresource: str | None = None
    ) -> Any:
        return await self.request("PATCH", kind.path(namespace, name, subresource), patch)

    def writes_since(self, mark: int) -> list[str]:
        """Writes (POST/PATCH/DELETE) to the API after request number ``mark``, as 'METHOD path'."""
        return [
            f"{r.method.value} {r.url.path}"
            for r in list(self.emulator)[mark:]
            if r.method in ("POST", "PATCH", "PUT", "DELETE") and "/events" not in r.url.path
        ]

    def request_count(self) -> int:
        return len(list(self.emulator))


@contextlib.asynccontextmanager
async def emulated_cluster() -> AsyncIterator[Cluster]:
    emulator = KubeEmulator()
    emulator.resources.load_bundled()
    emulator.declare_crd(load_crd())
    emulator.declare_crd(POD_MONITOR_CRD)
    async with emulator, kmock.Server(emulator) as server:
        yield Cluster(emulator, str(server.url).rstrip("/"))


@contextlib.asynccontextmanager
async def running_operator(cluster: Cluster, workdir: Path, **overrides: Any) -> AsyncIterator[str]:
    """The operator as ``voicechat-operator`` runs it (standalone, all namespaces unless ``overrides`` of
    :class:`OperatorSettings` say otherwise); yields its liveness URL.

    It logs in through $KUBECONFIG, like a developer's machine; the caller sets that variable.
    """
    health_port = free_port()
    options: dict[str, Any] = {"standalone": True, "health_host": "127.0.0.1", "health_port": health_port}
    settings = OperatorSettings(**{**options, **overrides})
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            **kopf_options(settings), settings=kopf.OperatorSettings(), stop_flag=stop, ready_flag=ready
        )
    )
    try:
        await eventually(lambda: ready.is_set() or task.done(), what="operator ready", within=60)
        if task.done():
            task.result()  # raises the startup failure
        yield f"http://127.0.0.1:{health_port}/healthz"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "emulator",
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "test-token"}}],
            }
        )
    )
    return path


async def eventually(
    check: Callable[[], Any], *, what: str, within: float = 60.0, interval: float = 0.05
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, and return that.

    Fails with ``what`` and the last value once ``within`` seconds have passed: a condition with a deadline,
    never a fixed sleep.
    """
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        result = check()
        last = await result if isinstance(result, Awaitable) else result
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval)
