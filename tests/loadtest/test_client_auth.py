"""The load test against a service that requires access tokens: each simulated user presents its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.session_app import session_app
from voicechat_loadtest.client import (
    AUTH_KEY_FILE_ENV,
    BadTargetError,
    ClientOptions,
    VoiceClient,
    options_from_environment,
    read_auth_key,
)
from voicechat_loadtest.runner import LoadConfig, run_load
from voicechat_session.auth import TOKEN_PREFIX, TokenVerifier
from voicechat_session.settings import SessionSettings

KEY = "k" * 40


async def test_each_user_connects_with_a_token_of_its_own() -> None:
    # One session per subject: two users only both get in if their tokens name different subjects.
    async with session_app(auth_key=KEY, max_sessions_per_subject=1) as service:
        options = ClientOptions(auth_key=KEY.encode(), ready_timeout_s=20)
        first, second = (
            VoiceClient(service.ws_url, 0, 0.0, options),
            VoiceClient(service.ws_url, 1, 0.0, options),
        )
        try:
            for client in (first, second):
                sample = await client.connect()
                assert sample.error is None, sample.error_message
                assert sample.connect_s is not None
            assert len(service.registry) == 2
        finally:
            await first.close()
            await second.close()


@pytest.mark.parametrize("key", [None, ("x" * 40).encode()], ids=["no token", "wrong key"])
async def test_a_missing_or_foreign_token_is_refused_before_ready(key: bytes | None) -> None:
    async with session_app(auth_key=KEY, auth_timeout_s=1.0) as service:
        client = VoiceClient(service.ws_url, 0, 0.0, ClientOptions(auth_key=key, ready_timeout_s=10))
        sample = await client.connect()
        await client.close()
        assert sample.error == "unauthorized", sample.error_message
        assert "token" in (sample.error_message or "")
        assert len(service.registry) == 0


def test_tokens_are_fresh_per_user_and_verify_with_the_service_key() -> None:
    options = ClientOptions(auth_key=KEY.encode(), token_ttl_s=120)
    assert ClientOptions().subprotocols(0) is None
    offered = options.subprotocols(7)
    assert offered is not None
    assert offered[0] == "voicechat"
    assert offered[1].startswith(TOKEN_PREFIX)
    identity = TokenVerifier(SessionSettings(auth_key=KEY)).verify(offered[1][len(TOKEN_PREFIX) :])
    assert identity.subject == "loadtest-7"
    assert identity.expires_at is not None


def test_a_bad_key_file_is_a_clear_error(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("tooshort\n")
    with pytest.raises(BadTargetError, match="needs 32"):
        read_auth_key(short)
    with pytest.raises(BadTargetError, match="cannot read"):
        read_auth_key(tmp_path / "absent")
    good = tmp_path / "key"
    good.write_text(KEY + "\n")
    assert read_auth_key(good) == KEY.encode()


async def test_run_load_fails_on_a_bad_key_before_connecting(tmp_path: Path) -> None:
    # Nothing listens at this URL: the key error must come first, not a connection error.
    config = LoadConfig(url="ws://127.0.0.1:9/ws", auth_key_file=tmp_path / "absent")
    with pytest.raises(BadTargetError, match="access-token key"):
        await run_load(config, progress=False)


def test_locust_users_read_the_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    monkeypatch.setenv(AUTH_KEY_FILE_ENV, str(key_file))
    assert options_from_environment().auth_key == KEY.encode()
    monkeypatch.delenv(AUTH_KEY_FILE_ENV)
    assert options_from_environment().auth_key is None
