"""The operator's check of an external LLM, against a local OpenAI-compatible stand-in, and the reconcile
around it: LLMReady with a reason for every failure, and children removed when the engine changes."""

from __future__ import annotations

import asyncio
import base64
import copy
import time
from typing import Any

from tests.support.fake_llm import FakeLLM
from tests.support.kube_schema import minimal_voicechat
from voicechat_common.localstack import free_port
from voicechat_operator import kinds
from voicechat_operator.kube import KubeClient
from voicechat_operator.probe import check_openai_endpoint, secret_value
from voicechat_operator.reconcile import Reconciler

KEY = "sk-test-0123456789"
NOW = "2026-12-03T07:00:00Z"


class FakeApi:
    """The calls a reconcile makes, on an in-memory store keyed by (kind, name)."""

    def __init__(self) -> None:
        self.store: dict[tuple[kinds.Kind, str], dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.statuses: list[dict[str, Any]] = []

    def put(self, obj: dict[str, Any]) -> None:
        self.store[(kinds.kind_of(obj), obj["metadata"]["name"])] = copy.deepcopy(obj)

    async def get(self, kind: kinds.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.store.get((kind, name)))

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.put(obj)
        return obj

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        if (kinds.kind_of(obj), obj["metadata"]["name"]) in self.store:
            return None
        self.put(obj)
        return obj

    async def merge_patch(self, kind: kinds.Kind, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.store[(kind, name)]["data"].update(patch["data"])

    async def delete(self, kind: kinds.Kind, namespace: str, name: str) -> bool:
        self.deleted.append(f"{kind.kind}/{name}")
        return self.store.pop((kind, name), None) is not None

    async def patch_status(self, kind: kinds.Kind, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(copy.deepcopy(status))

    async def close(self) -> None:
        pass


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "voice"},
        "data": encoded,
    }


def _voicechat(llm: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    body = minimal_voicechat("voice")
    body["metadata"].update(uid="uid-probe", generation=generation)
    body["spec"]["llm"] = llm
    return body


def _reconciler(api: FakeApi, interval_s: float = 60.0) -> Reconciler:
    client: KubeClient = api  # type: ignore[assignment]
    return Reconciler(client, check_interval_s=interval_s, check_timeout_s=2.0)


def _llm_ready(status: dict[str, Any]) -> dict[str, Any]:
    (found,) = [c for c in status["conditions"] if c["type"] == "LLMReady"]
    return found


# --- the check itself --------------------------------------------------------------------------------------


async def test_check_passes_with_the_right_key_and_a_listed_model() -> None:
    llm = FakeLLM(api_key=KEY, model="gpt-test")
    async with llm.serving() as url:
        result = await check_openai_endpoint(url, "gpt-test", KEY, timeout_s=2, now=NOW)
    assert (result.ok, result.reason) == (True, "EndpointReachable"), result
    assert result.latency_ms is not None
    assert 0 <= result.latency_ms < 2000
    assert "model gpt-test listed" in result.message
    assert result.checked_at == NOW


async def test_a_wrong_or_missing_key_is_unauthorized() -> None:
    async with FakeLLM(api_key=KEY).serving() as url:
        wrong = await check_openai_endpoint(url, "fake-model", "sk-wrong", timeout_s=2, now=NOW)
        missing = await check_openai_endpoint(url, "fake-model", None, timeout_s=2, now=NOW)
    assert (wrong.ok, wrong.reason) == (False, "Unauthorized")
    assert "HTTP 401" in wrong.message
    assert "refused" in wrong.message
    assert (missing.ok, missing.reason) == (False, "Unauthorized")
    assert "needs an API key" in missing.message


async def test_an_unlisted_model_is_reported() -> None:
    async with FakeLLM(model="llama3.2").serving() as url:
        result = await check_openai_endpoint(url, "gpt-4o", None, timeout_s=2, now=NOW)
    assert (result.ok, result.reason) == (False, "ModelNotFound")
    assert "'gpt-4o'" in result.message
    assert "llama3.2" in result.message


async def test_nothing_listening_is_unreachable_quickly() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    result = await check_openai_endpoint(url, "m", KEY, timeout_s=2, now=NOW)
    assert (result.ok, result.reason, result.latency_ms) == (False, "Unreachable", None)
    assert url in result.message
    assert time.monotonic() - started < 3


async def test_a_server_that_does_not_answer_times_out_as_unreachable() -> None:
    released = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)  # accept the request, never answer
        await released.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await check_openai_endpoint(f"http://127.0.0.1:{port}/v1", "m", None, timeout_s=0.5, now=NOW)
    finally:
        released.set()
        server.close()
    assert (result.ok, result.reason) == (False, "Unreachable")
    assert "timed out after 0.5 s" in result.message


async def test_a_server_error_is_unexpected() -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 7\r\nConnection: close\r\n\r\nupstrea")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(broken, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await check_openai_endpoint(f"http://127.0.0.1:{port}/v1/", "m", None, timeout_s=2, now=NOW)
    finally:
        server.close()
    assert (result.ok, result.reason) == (False, "UnexpectedResponse")
    assert "HTTP 502" in result.message
    assert f"127.0.0.1:{port}/v1/models" in result.message


def test_secret_value_decodes_and_refuses_garbage() -> None:
    assert secret_value(_secret("s", {"api-key": f" {KEY}\n"}), "api-key") == KEY
    assert secret_value(_secret("s", {"api-key": KEY}), "other") is None
    assert secret_value(None, "api-key") is None
    assert secret_value({"data": {"api-key": "not base64!"}}, "api-key") is None


# --- in the reconcile --------------------------------------------------------------------------------------


async def test_reconcile_reads_the_secret_and_reports_each_failure() -> None:
    api = FakeApi()
    reconciler = _reconciler(api)
    llm = FakeLLM(api_key=KEY)
    async with llm.serving() as url:
        spec = {"engine": "external", "url": url, "model": "fake-model", "apiKeySecret": {"name": "provider"}}
        await reconciler.reconcile(_voicechat(spec), force=True)
        missing = _llm_ready(api.statuses[-1])
        assert (missing["status"], missing["reason"]) == ("False", "SecretMissing")
        assert "Secret provider does not exist" in missing["message"]

        api.put(_secret("provider", {"token": KEY}))
        await reconciler.reconcile(_voicechat(spec, 2), force=True)
        assert "has no key 'api-key'" in _llm_ready(api.statuses[-1])["message"]

        api.put(_secret("provider", {"api-key": "sk-revoked"}))
        await reconciler.reconcile(_voicechat(spec, 3), force=True)
        assert _llm_ready(api.statuses[-1])["reason"] == "Unauthorized"

        api.put(_secret("provider", {"api-key": KEY}))
        await reconciler.reconcile(_voicechat(spec, 4), force=True)
        status = api.statuses[-1]
        assert (_llm_ready(status)["status"], _llm_ready(status)["reason"]) == ("True", "EndpointReachable")
        assert isinstance(status["llm"]["checkLatencyMs"], int)
        assert status["llm"]["lastCheckTime"]
        assert status["endpoints"]["llm"] == url
    # No LLM objects, and no generated key for the provider.
    assert not any(name == "demo-llm" for _, name in api.store)
    assert (kinds.SECRET, "demo-llm-api-key") not in api.store
    await reconciler.close()


async def test_the_endpoint_is_rechecked_periodically_without_a_spec_change() -> None:
    api = FakeApi()
    reconciler = _reconciler(api, interval_s=0.2)
    llm = FakeLLM()
    async with llm.serving() as url:
        body = _voicechat({"engine": "external", "url": url, "model": "fake-model"})
        await reconciler.reconcile(body, force=True)
        assert _llm_ready(api.statuses[-1])["status"] == "True"
        # The stored object, as the re-check reads it (the fake's patch_status does not store it).
        body["status"] = api.statuses[-1]
        api.put(body)
    # The server is gone now: the next periodic check says so without any event.
    deadline = time.monotonic() + 10
    while _llm_ready(api.statuses[-1])["reason"] != "Unreachable":
        assert time.monotonic() < deadline, api.statuses[-1]
        await asyncio.sleep(0.05)
    assert [c["reason"] for c in api.statuses[-1]["conditions"] if c["type"] == "Ready"] == ["LLMNotReady"]
    await reconciler.close()


async def test_switching_engines_deletes_and_recreates_the_llm_children() -> None:
    api = FakeApi()
    reconciler = _reconciler(api)
    in_cluster = _voicechat({"engine": "vllm"})
    await reconciler.reconcile(in_cluster, force=True)
    llm_objects = {(k.kind, n) for k, n in api.store if n == "demo-llm"}
    assert llm_objects == {("Deployment", "demo-llm"), ("Service", "demo-llm"), ("NetworkPolicy", "demo-llm")}
    # A look-alike the VoiceChat does not own is never deleted.
    api.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "demo-session"}})

    bedrock = {
        "engine": "bedrock",
        "model": "meta.llama3-1-8b-instruct-v1:0",
        "bedrock": {"region": "us-east-1"},
    }
    applied = await reconciler.reconcile(_voicechat(bedrock, 2), force=True)
    assert {"-Deployment/demo-llm", "-Service/demo-llm", "-NetworkPolicy/demo-llm"} <= set(applied)
    assert not any(n == "demo-llm" for _, n in api.store)
    account = api.store[(kinds.SERVICE_ACCOUNT, "demo-session")]
    assert account["metadata"]["ownerReferences"][0]["uid"] == "uid-probe"  # applied over the look-alike
    llm_ready = _llm_ready(api.statuses[-1])
    assert (llm_ready["status"], llm_ready["reason"]) == ("False", "NoReadySessionPods")

    applied = await reconciler.reconcile(_voicechat({"engine": "vllm"}, 3), force=True)
    assert "-ServiceAccount/demo-session" in applied
    assert {(k.kind, n) for k, n in api.store if n == "demo-llm"} == llm_objects
    # In-cluster LLMReady follows the Deployment again (no controller here to make its pods ready).
    assert _llm_ready(api.statuses[-1])["reason"] == "WarmingUp"
    await reconciler.close()
