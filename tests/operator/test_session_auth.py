"""Session access tokens: every rendered session pod starts (a key source or the explicit opt-out)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from voicechat_operator.env import env_name
from voicechat_operator.render import (
    Owner,
    generated_secrets,
    render_config_map,
    render_session_deployment,
)
from voicechat_operator.spec import VoiceChatSpec, parse_spec
from voicechat_session.auth import TokenVerifier, startup_refusal
from voicechat_session.settings import SessionSettings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "operator" / "examples").glob("*.yaml"))
OWNER = Owner(name="demo", namespace="voice", uid="6f1c2b7e-0000-4000-8000-000000000002")
DUMMY_KEY = "k" * 32
AUTH_KEY = env_name(SessionSettings, "auth_key")
ALLOW = env_name(SessionSettings, "allow_unauthenticated")


def _example(path: Path) -> VoiceChatSpec:
    return parse_spec("demo", yaml.safe_load(path.read_text())["spec"])


def _with_auth(auth: dict[str, Any] | None = None) -> VoiceChatSpec:
    raw = yaml.safe_load((REPO / "operator" / "examples" / "voicechat-minimal.yaml").read_text())["spec"]
    if auth is not None:
        raw["session"]["auth"] = auth
    return parse_spec("demo", raw)


def _session_env(spec: VoiceChatSpec) -> list[dict[str, Any]]:
    (container,) = [
        c
        for c in render_session_deployment(OWNER, spec)["spec"]["template"]["spec"]["containers"]
        if c["name"] == "session"
    ]
    env: list[dict[str, Any]] = container["env"]
    return env


def _resolved_env(spec: VoiceChatSpec) -> dict[str, str]:
    """The container's environment as the kubelet would build it; Secret values become a 32-byte dummy."""
    config = render_config_map(OWNER, spec)["data"]
    out: dict[str, str] = {}
    for item in _session_env(spec):
        source = item.get("valueFrom")
        if source is None:
            out[item["name"]] = item["value"]
        elif "secretKeyRef" in source:
            out[item["name"]] = DUMMY_KEY
        else:
            out[item["name"]] = config[source["configMapKeyRef"]["key"]]
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_session_has_an_auth_key_or_the_opt_out(path: Path) -> None:
    env = {item["name"]: item for item in _session_env(_example(path))}
    assert AUTH_KEY in env or env.get(ALLOW, {}).get("value") == "true"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_session_passes_the_startup_check_on_0_0_0_0(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _resolved_env(_example(path))
    for name in [n for n in os.environ if n.startswith("VOICECHAT_SESSION_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = SessionSettings(host="0.0.0.0")
    assert startup_refusal(settings, TokenVerifier(settings)) is None


def test_default_generates_the_key_secret_and_references_it() -> None:
    spec = _with_auth()
    env = {item["name"]: item for item in _session_env(spec)}
    ref = env[AUTH_KEY]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "demo-session-auth", "key": "key"}
    assert ALLOW not in env
    generated = {s.name: s.keys for s in generated_secrets(OWNER, spec)}
    assert generated["demo-session-auth"] == ("key",)


def test_key_secret_is_referenced_and_not_generated() -> None:
    spec = _with_auth({"keySecret": {"name": "app-tokens", "key": "hs256"}})
    env = {item["name"]: item for item in _session_env(spec)}
    assert env[AUTH_KEY]["valueFrom"]["secretKeyRef"] == {"name": "app-tokens", "key": "hs256"}
    assert "demo-session-auth" not in {s.name for s in generated_secrets(OWNER, spec)}


def test_allow_unauthenticated_renders_the_opt_out_and_no_key() -> None:
    spec = _with_auth({"allowUnauthenticated": True})
    env = {item["name"]: item for item in _session_env(spec)}
    assert env[ALLOW] == {"name": ALLOW, "value": "true"}
    assert AUTH_KEY not in env
    assert "demo-session-auth" not in {s.name for s in generated_secrets(OWNER, spec)}


def test_without_a_key_or_opt_out_the_startup_check_refuses() -> None:
    # Guards the check above: what the operator rendered before this fix crash-loops.
    settings = SessionSettings(host="0.0.0.0", auth_key=None, allow_unauthenticated=False)
    assert startup_refusal(settings, TokenVerifier(settings)) is not None
