"""ensure_secret: created once, missing keys added, existing values never changed, foreign Secrets left alone."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from voicechat_operator import kinds
from voicechat_operator.generated import ensure_secret
from voicechat_operator.kube import KubeApiError, KubeClient
from voicechat_operator.render import GeneratedSecret, Owner

OWNER = Owner(name="demo", namespace="voice", uid="uid-1")
SECRET = GeneratedSecret("demo-keys", ("a", "b"), "session")


class FakeSecrets:
    """The three calls ensure_secret makes, on an in-memory store of Secrets."""

    def __init__(self) -> None:
        self.store: dict[str, dict[str, Any]] = {}
        self.writes: list[str] = []

    async def get(self, kind: kinds.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        assert kind is kinds.SECRET
        return copy.deepcopy(self.store.get(name))

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        self.writes.append("create")
        if obj["metadata"]["name"] in self.store:
            return None
        self.store[obj["metadata"]["name"]] = copy.deepcopy(obj)
        return obj

    async def merge_patch(self, kind: kinds.Kind, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.writes.append("patch")
        self.store[name]["data"].update(patch["data"])


def _client(fake: FakeSecrets) -> KubeClient:
    return fake  # type: ignore[return-value]


async def test_created_once_then_left_alone() -> None:
    fake = FakeSecrets()
    assert await ensure_secret(_client(fake), OWNER, SECRET) == "created"
    first = copy.deepcopy(fake.store["demo-keys"])
    assert set(first["data"]) == {"a", "b"}
    assert first["data"]["a"] != first["data"]["b"]
    assert first["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert await ensure_secret(_client(fake), OWNER, SECRET) is None
    assert fake.store["demo-keys"] == first
    assert fake.writes == ["create"]


async def test_only_missing_keys_are_added() -> None:
    fake = FakeSecrets()
    await ensure_secret(_client(fake), OWNER, GeneratedSecret("demo-keys", ("a",), "session"))
    value_a = fake.store["demo-keys"]["data"]["a"]
    assert await ensure_secret(_client(fake), OWNER, SECRET) == "added b"
    assert fake.store["demo-keys"]["data"]["a"] == value_a
    assert "b" in fake.store["demo-keys"]["data"]


async def test_a_secret_someone_else_owns_is_not_taken_over() -> None:
    fake = FakeSecrets()
    fake.store["demo-keys"] = {"metadata": {"name": "demo-keys"}, "data": {"a": "dXNlcg=="}}
    with pytest.raises(KubeApiError, match="not owned by VoiceChat demo"):
        await ensure_secret(_client(fake), OWNER, SECRET)
    assert fake.store["demo-keys"]["data"] == {"a": "dXNlcg=="}
    assert fake.writes == []


async def test_created_meanwhile_by_another_replica_is_accepted() -> None:
    fake = FakeSecrets()
    other = FakeSecrets()
    await ensure_secret(_client(other), OWNER, SECRET)
    real_get = fake.get
    calls = 0

    async def get_then_race(kind: kinds.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            fake.store = copy.deepcopy(other.store)  # created between our read and our create
            return None
        return await real_get(kind, namespace, name)

    fake.get = get_then_race  # type: ignore[method-assign]
    assert await ensure_secret(_client(fake), OWNER, SECRET) is None
    assert fake.store == other.store
