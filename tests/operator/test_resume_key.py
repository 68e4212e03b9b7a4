"""The session pods' resume key: a Secret the spec names, or one the operator creates once and never rotates.

Pure render checks, and the reconciler against a recording stand-in for the API client (the cluster tier
proves the API calls themselves).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kubernetes_validate

from tests.support.kube_schema import minimal_voicechat
from voicechat_operator import kinds, rbac
from voicechat_operator.generated import new_value, render_generated_secret
from voicechat_operator.reconcile import Reconciler
from voicechat_operator.render import (
    RESUME_MOUNT,
    Owner,
    generated_secrets,
    render_children,
    render_session_deployment,
    resume_secret_name,
    session_name,
    session_settings,
)
from voicechat_operator.spec import VoiceChatSpec, parse_spec
from voicechat_session.resume import MIN_SECRET_CHARS

OWNER = Owner(name="demo", namespace="voice", uid="6f1c2b7e-0000-4000-8000-000000000002")


def _spec(**session: Any) -> VoiceChatSpec:
    body = minimal_voicechat("voice")
    body["spec"]["session"].update(session)
    return parse_spec("demo", body["spec"])


def _pod(spec: VoiceChatSpec) -> dict[str, Any]:
    pod: dict[str, Any] = render_session_deployment(OWNER, spec)["spec"]["template"]["spec"]
    return pod


def _config_env(spec: VoiceChatSpec) -> dict[str, str]:
    return session_settings(OWNER, spec)


def test_generated_secret_is_mounted_and_its_files_configured() -> None:
    spec = _spec()
    pod = _pod(spec)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "resume-key"]
    assert volume["secret"]["secretName"] == "demo-session-resume" == resume_secret_name(OWNER, spec)
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "resume-key"]
    assert (mount["mountPath"], mount["readOnly"]) == (RESUME_MOUNT, True)
    settings = _config_env(spec)
    assert settings["VOICECHAT_SESSION_RESUME_KEY_FILE"] == f"{RESUME_MOUNT}/key"
    assert settings["VOICECHAT_SESSION_RESUME_PREVIOUS_KEY_FILE"] == f"{RESUME_MOUNT}/previous-key"


def test_a_referenced_secret_is_mounted_instead_and_nothing_is_generated() -> None:
    spec = _spec(resumeKeySecret={"name": "my-keys", "key": "current", "previousKey": "old"})
    (volume,) = [v for v in _pod(spec)["volumes"] if v["name"] == "resume-key"]
    assert volume["secret"]["secretName"] == "my-keys"
    settings = _config_env(spec)
    assert settings["VOICECHAT_SESSION_RESUME_KEY_FILE"] == f"{RESUME_MOUNT}/current"
    assert settings["VOICECHAT_SESSION_RESUME_PREVIOUS_KEY_FILE"] == f"{RESUME_MOUNT}/old"
    assert "my-keys" not in {g.name for g in generated_secrets(OWNER, spec)}
    assert "demo-session-resume" not in {g.name for g in generated_secrets(OWNER, spec)}


def test_generated_secret_is_one_of_the_operator_generated_secrets() -> None:
    spec = _spec()
    wanted = {g.name: g for g in generated_secrets(OWNER, spec)}
    resume = wanted["demo-session-resume"]
    assert resume.keys == ("key",)
    secret = render_generated_secret(OWNER, resume, {"key": new_value()})
    assert len(new_value()) >= MIN_SECRET_CHARS
    assert secret["metadata"]["ownerReferences"] == [OWNER.reference()]
    kubernetes_validate.validate(secret, "1.33", strict=True)
    # Never among the applied children: a re-render would replace the key and orphan every token.
    assert all(child["kind"] != "Secret" for child in render_children(OWNER, spec))


def test_rbac_never_lists_or_watches_secrets() -> None:
    rules = rbac.required_rules()
    assert rbac.allows(rules, "", "secrets", "create")
    for verb in ("list", "watch", "delete"):
        assert not rbac.allows(rules, "", "secrets", verb), verb


class RecordingClient:
    """Enough of KubeClient for a reconcile: objects live in a dict; creates and applies are recorded."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.applied: list[str] = []
        self.live: dict[tuple[str, str], dict[str, Any]] = {}

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        key = (obj["kind"], obj["metadata"]["name"])
        if key in self.live:
            return None
        self.created.append(f"{obj['kind']}/{obj['metadata']['name']}")
        self.live[key] = dict(obj)
        return dict(obj)

    async def get(self, kind: kinds.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        return self.live.get((kind.kind, name))

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self.applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
        self.live[(obj["kind"], obj["metadata"]["name"])] = dict(obj)
        return dict(obj)

    async def merge_patch(self, kind: kinds.Kind, namespace: str, name: str, patch: Any) -> None:
        raise AssertionError("no key is missing from a Secret the operator made")

    async def delete(self, kind: kinds.Kind, namespace: str, name: str) -> bool:
        return False

    async def patch_status(self, kind: kinds.Kind, namespace: str, name: str, status: Any) -> None:
        return None


def _body(**session: Any) -> dict[str, Any]:
    body = minimal_voicechat("voice")
    body["spec"]["session"].update(session)
    body["metadata"].update({"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid})
    return body


async def test_the_secret_is_created_once_before_the_session_pods_and_never_replaced() -> None:
    client = RecordingClient()
    reconciler = Reconciler(client)  # type: ignore[arg-type]
    await reconciler.reconcile(_body(), force=True)
    assert "Secret/demo-session-resume" in client.created
    key = client.live[("Secret", "demo-session-resume")]["data"]["key"]
    await reconciler.reconcile(_body(), force=True)
    assert client.created.count("Secret/demo-session-resume") == 1
    assert client.live[("Secret", "demo-session-resume")]["data"]["key"] == key
    assert session_name(OWNER) in [a.split("/", 1)[1] for a in client.applied]


async def test_a_referenced_secret_is_never_created() -> None:
    client = RecordingClient()
    await Reconciler(client).reconcile(_body(resumeKeySecret={"name": "my-keys"}), force=True)  # type: ignore[arg-type]
    assert "Secret/demo-session-resume" not in client.created
    assert "Secret/my-keys" not in client.created
