"""The session pods' resume key: a Secret the spec names, or one the operator creates once and never rotates.

Pure render checks, and the reconciler against a recording stand-in for the API client (the cluster tier
proves the API calls themselves).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kubernetes_validate
import pytest

from tests.support.kube_schema import minimal_voicechat
from voicechat_operator import kinds, rbac
from voicechat_operator.reconcile import Reconciler
from voicechat_operator.render import (
    RESUME_MOUNT,
    Owner,
    render_children,
    render_resume_secret,
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
    assert render_resume_secret(OWNER, spec) is None


def test_generated_secret_is_random_owned_and_valid() -> None:
    spec = _spec()
    first, second = render_resume_secret(OWNER, spec), render_resume_secret(OWNER, spec)
    assert first is not None
    assert second is not None
    key = first["stringData"]["key"]
    assert len(key) >= MIN_SECRET_CHARS
    assert key != second["stringData"]["key"]
    assert first["metadata"]["ownerReferences"] == [OWNER.reference()]
    kubernetes_validate.validate(first, "1.33", strict=True)
    # Never among the applied children: a re-render would replace the key and orphan every token.
    assert all(child["kind"] != "Secret" for child in render_children(OWNER, spec))


def test_rbac_creates_secrets_and_nothing_more() -> None:
    rules = rbac.required_rules()
    assert rbac.allows(rules, "", "secrets", "create")
    for verb in ("get", "list", "watch", "patch", "update", "delete"):
        assert not rbac.allows(rules, "", "secrets", verb), verb


class RecordingClient:
    """The calls the reconciler makes; every child already matches (nothing drifted) unless deleted."""

    def __init__(self, existing_secret: bool) -> None:
        self.created: list[dict[str, Any]] = []
        self.applied: list[str] = []
        self.existing_secret = existing_secret
        self.live: dict[tuple[str, str], dict[str, Any]] = {}

    async def create(self, obj: Mapping[str, Any]) -> bool:
        self.created.append(dict(obj))
        return not self.existing_secret

    async def get(self, kind: kinds.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        return self.live.get((kind.kind, name))

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self.applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
        self.live[(obj["kind"], obj["metadata"]["name"])] = dict(obj)
        return dict(obj)

    async def delete(self, kind: kinds.Kind, namespace: str, name: str) -> bool:
        return False

    async def patch_status(self, kind: kinds.Kind, namespace: str, name: str, status: Any) -> None:
        return None


def _body(**session: Any) -> dict[str, Any]:
    body = minimal_voicechat("voice")
    body["spec"]["session"].update(session)
    body["metadata"].update({"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid})
    return body


@pytest.mark.parametrize("existing", [False, True])
async def test_the_secret_is_created_before_the_session_pods_and_never_replaced(existing: bool) -> None:
    client = RecordingClient(existing_secret=existing)
    reconciler = Reconciler(client)  # type: ignore[arg-type]
    applied = await reconciler.reconcile(_body(), force=True)
    assert [c["metadata"]["name"] for c in client.created] == ["demo-session-resume"]
    assert ("Secret/demo-session-resume" in applied) is not existing
    if not existing:  # created before the Deployment whose pods mount it
        assert applied.index("Secret/demo-session-resume") < applied.index(
            f"Deployment/{session_name(OWNER)}"
        )
    # An idle reconcile (nothing drifted) makes no call at all, so none to the Secret either.
    client.created.clear()
    assert await reconciler.reconcile(_body(), force=False) == []
    assert client.created == []


async def test_a_referenced_secret_is_never_created() -> None:
    client = RecordingClient(existing_secret=False)
    await Reconciler(client).reconcile(_body(resumeKeySecret={"name": "my-keys"}), force=True)  # type: ignore[arg-type]
    assert client.created == []
