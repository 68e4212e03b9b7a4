"""The operator as its container runs it (`voicechat-operator`, settings from the environment), as a process
next to the test control plane, logged in with a token of its own ServiceAccount: a rule missing from the
manifests' or the chart's RBAC is a 403 here, as it would be in a cluster.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.support.control_plane import ControlPlane, wait_for
from voicechat_common.localstack import free_port

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


class OperatorProcess:
    def __init__(
        self,
        plane: ControlPlane,
        workdir: Path,
        *,
        namespace: str,
        service_account: str,
        env: Mapping[str, str],
        name: str = "operator",
    ) -> None:
        self.plane = plane
        self.workdir = workdir
        self.namespace = namespace
        self.service_account = service_account
        self.env = dict(env)
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.health_url = ""

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def start(self) -> None:
        token = self.plane.admin.service_account_token(self.namespace, self.service_account)
        kubeconfig = self.plane.kubeconfig_for_token(self.workdir / f"{self.name}.kubeconfig", token)
        port = free_port()
        self.health_url = f"http://127.0.0.1:{port}/healthz"
        env = {
            **os.environ,
            **self.env,
            "KUBECONFIG": str(kubeconfig),
            "VOICECHAT_OPERATOR_HEALTH_HOST": "127.0.0.1",
            "VOICECHAT_OPERATOR_HEALTH_PORT": str(port),
            "VOICECHAT_OPERATOR_LOG_FORMAT": "json",
        }
        script = Path(sys.executable).with_name("voicechat-operator")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([str(script)], env=env, stdout=log, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"operator exited {self.process.returncode}:\n{self.tail()}")
            try:
                return httpx.get(self.health_url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, what="operator liveness endpoint", within=90, interval=0.2)

    def stop(self) -> int:
        """SIGTERM, as the kubelet does; returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=10)
        self.process = None
        return code

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_lines() if line.startswith("{")]

    def writes_since(self, mark: int) -> list[str]:
        """API writes this operator made after audit event number ``mark``, as 'verb resource/name'."""
        found = []
        for event in self.plane.audit_events()[mark:]:
            if event["user"]["username"] == self.username and event["verb"] in WRITE_VERBS:
                ref = event.get("objectRef", {})
                sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
                found.append(f"{event['verb']} {ref.get('resource')}{sub}/{ref.get('name')}")
        return found

    def reads_since(self, mark: int, resource: str, name: str) -> int:
        return sum(
            1
            for event in self.plane.audit_events()[mark:]
            if event["user"]["username"] == self.username
            and event["verb"] == "get"
            and event.get("objectRef", {}).get("resource") == resource
            and event.get("objectRef", {}).get("name") == name
        )


def container_env(deployment: Mapping[str, Any]) -> dict[str, str]:
    """The plain `value` environment variables of a Deployment's first container (the operator's settings)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", []) if "valueFrom" not in e}


def assert_compact_quiet_logs(process: OperatorProcess) -> None:
    """One short JSON object per line, without kopf's settings repr; nothing harmless at error level (a 429
    that kopf retries); no 403 (the RBAC covers every call)."""
    lines = process.log_lines()
    assert lines
    for line in lines:
        record = json.loads(line)
        assert len(line) < 1024, line[:300]
        assert "settings" not in record
        if record["level"] == "error":
            assert "429" not in line, line
            assert "initializing" not in line, line
        assert not re.search(r"\b403\b|Forbidden", record["msg"]), line
