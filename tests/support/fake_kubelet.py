"""A stand-in kubelet for the cluster tests: ``python -m tests.support.fake_kubelet --kubeconfig K --node N``.

It does what the control plane needs from a kubelet and nothing more: registers a Node (CPU, memory and
``nvidia.com/gpu`` capacity, so GPU pods schedule), keeps it Ready (status heartbeat and its Lease in
kube-node-lease), marks every pod bound to it Running with all containers ready (no container runs: probes,
images and Job containers are out of reach here), and finalizes pods being deleted. Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import signal
import ssl
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import yaml

logger = logging.getLogger("test-kubelet")
HEARTBEAT_S = 10.0
Obj = dict[str, Any]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def now_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def client_from_kubeconfig(path: Path) -> httpx.Client:
    config = yaml.safe_load(path.read_text())
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    context = ssl.create_default_context(cafile=cluster["certificate-authority"])
    if "client-certificate" in user:
        context.load_cert_chain(user["client-certificate"], user["client-key"])
    headers = {"Authorization": f"Bearer {user['token']}"} if "token" in user else {}
    return httpx.Client(
        base_url=cluster["server"],
        verify=context,
        headers=headers,
        timeout=httpx.Timeout(30, read=None),
    )


class Kubelet:
    def __init__(self, http: httpx.Client, node: str, gpus: int) -> None:
        self.http = http
        self.node = node
        self.gpus = gpus
        self.stopped = threading.Event()
        self.next_ip = 2

    def _check(self, rsp: httpx.Response, allow: tuple[int, ...] = ()) -> None:
        if rsp.status_code >= 400 and rsp.status_code not in allow:
            raise RuntimeError(
                f"{rsp.request.method} {rsp.request.url.path}: {rsp.status_code} {rsp.text[:500]}"
            )

    def _node_conditions(self) -> list[Obj]:
        stamp = now()
        ok = {"lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
        return [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test kubelet", **ok},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", **ok},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", **ok},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", **ok},
        ]

    def register(self) -> None:
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "250", "nvidia.com/gpu": str(self.gpus)}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
        }
        self._check(self.http.post("/api/v1/nodes", json=node), allow=(409,))
        status = {
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": self._node_conditions(),
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.node}],
                "nodeInfo": {"kubeletVersion": "v1.34.4-test", "architecture": "amd64", "operatingSystem": "linux",
                             "containerRuntimeVersion": "none://0", "kernelVersion": "", "osImage": "test",
                             "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
            }
        }  # fmt: skip
        self._patch_status(f"/api/v1/nodes/{self.node}/status", status)
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40, "renewTime": now_micro()},
        }
        self._check(
            self.http.post("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", json=lease),
            allow=(409,),
        )
        logger.info("registered node %s with %d GPUs", self.node, self.gpus)

    def _patch_status(self, path: str, body: Obj, allow: tuple[int, ...] = ()) -> None:
        rsp = self.http.patch(
            path, content=json.dumps(body), headers={"Content-Type": "application/strategic-merge-patch+json"}
        )
        self._check(rsp, allow)

    def heartbeat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            try:
                lease = {"spec": {"holderIdentity": self.node, "renewTime": now_micro()}}
                rsp = self.http.patch(
                    f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}",
                    content=json.dumps(lease),
                    headers={"Content-Type": "application/merge-patch+json"},
                )
                self._check(rsp)
                self._patch_status(
                    f"/api/v1/nodes/{self.node}/status", {"status": {"conditions": self._node_conditions()}}
                )
            except (httpx.HTTPError, RuntimeError):
                logger.exception("heartbeat failed")

    def handle(self, pod: Obj) -> None:
        meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
        if spec.get("nodeName") != self.node:
            return
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        if meta.get("deletionTimestamp"):
            # What a kubelet does once the containers are gone: the final, immediate delete.
            body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                    "preconditions": {"uid": meta["uid"]}}  # fmt: skip
            self._check(self.http.request("DELETE", path, json=body), allow=(404, 409))
            logger.info("finalized pod %s/%s", meta["namespace"], meta["name"])
            return
        if status.get("phase") == "Running":
            return
        stamp = now()
        ip = f"10.244.0.{self.next_ip % 250 + 2}"
        self.next_ip += 1
        containers = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "containerID": f"test://{meta['uid']}/{c['name']}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": stamp}},
            }
            for c in spec.get("containers", [])
        ]
        conditions = [
            {"type": t, "status": "True", "lastTransitionTime": stamp}
            for t in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled")
        ]
        body = {
            "status": {
                "phase": "Running",
                "conditions": conditions,
                "containerStatuses": containers,
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": stamp,
            }
        }
        self._patch_status(f"{path}/status", body, allow=(404, 409))
        logger.info("pod %s/%s running and ready", meta["namespace"], meta["name"])

    def run_pods(self) -> None:
        """List, then watch, the pods bound to this node; re-list whenever the watch ends."""
        selector = {"fieldSelector": f"spec.nodeName={self.node}"}
        while not self.stopped.is_set():
            try:
                rsp = self.http.get("/api/v1/pods", params=selector)
                self._check(rsp)
                listing = rsp.json()
                for pod in listing["items"]:
                    self.handle(pod)
                params = {**selector, "watch": "1", "resourceVersion": listing["metadata"]["resourceVersion"],
                          "timeoutSeconds": "120", "allowWatchBookmarks": "false"}  # fmt: skip
                with self.http.stream("GET", "/api/v1/pods", params=params) as stream:
                    for line in stream.iter_lines():
                        if self.stopped.is_set():
                            return
                        if not line:
                            continue
                        event = json.loads(line)
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self.handle(event["object"])
                        elif event["type"] == "ERROR":
                            break  # e.g. 410 Gone: list again
            except (httpx.HTTPError, RuntimeError):
                if not self.stopped.is_set():
                    logger.exception("pod loop failed; listing again")
                    self.stopped.wait(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    kubelet = Kubelet(client_from_kubeconfig(args.kubeconfig), args.node, args.gpus)

    def stop(signum: int, frame: FrameType | None) -> None:
        kubelet.stopped.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    kubelet.register()
    threading.Thread(target=kubelet.heartbeat, name="heartbeat", daemon=True).start()
    kubelet.run_pods()


if __name__ == "__main__":
    main()
