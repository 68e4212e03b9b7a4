"""Resume tokens (resume.py): sealing, opening, rotation, expiry, size bound and every failure."""

from __future__ import annotations

import base64
import json
import typing
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from voicechat_session import protocol
from voicechat_session.resume import (
    KeyRing,
    ResumeCodec,
    Resumed,
    ResumeError,
    ResumeFailure,
    ResumeTurn,
    attempt,
    codec_from_settings,
    derive_key,
    generate_secret,
    key_ring_from_settings,
)
from voicechat_session.resume_size import token_chars_for
from voicechat_session.settings import SessionSettings

KEY_A = "a" * 40
KEY_B = "b" * 40
NOW = 1_800_000_000.0
FRAME = 64_000


def _codec(
    keys: KeyRing | None = None, *, ttl_s: float = 1800.0, messages: int = 24, chars: int = 8000
) -> ResumeCodec:
    return ResumeCodec(
        keys or KeyRing(KEY_A),
        ttl_s=ttl_s,
        max_frame_bytes=FRAME,
        history_max_messages=messages,
        history_max_chars=chars,
    )


def _history(*contents: str) -> list[ResumeTurn]:
    return [ResumeTurn(role="user" if i % 2 == 0 else "assistant", content=c) for i, c in enumerate(contents)]


def _seal(codec: ResumeCodec, history: list[ResumeTurn] | None = None, *, now: float = NOW) -> str:
    return codec.seal(
        session_id="s1",
        voice="jf_alpha",
        speed=1.25,
        history=history if history is not None else _history("My name is Ada.", "Nice to meet you, Ada."),
        now=now,
    )


def _failure(codec: ResumeCodec, token: str, *, now: float = NOW) -> ResumeFailure:
    with pytest.raises(ResumeError) as info:
        codec.open(token, now=now)
    assert info.value.detail  # every failure explains itself
    return info.value.failure


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_restores_everything() -> None:
    codec = _codec()
    resumed = codec.open(_seal(codec), now=NOW + 12.0)
    state = resumed.state
    assert state.session_id == "s1"
    assert state.voice == "jf_alpha"
    assert state.speed == 1.25
    assert state.issued_at == NOW
    assert [(t.role, t.content) for t in state.history] == [
        ("user", "My name is Ada."),
        ("assistant", "Nice to meet you, Ada."),
    ]
    assert resumed.age_s == pytest.approx(12.0)


def test_token_is_opaque_and_versioned() -> None:
    token = _seal(_codec())
    version, kid, body = token.split(".")
    assert version == "v1"
    assert kid == KeyRing(KEY_A).current_kid
    assert "Ada" not in token
    assert b"Ada" not in base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def test_same_state_seals_differently() -> None:
    codec = _codec()
    assert _seal(codec) != _seal(codec)  # a fresh nonce each time


# -------------------------------------------------------------------------------------------- failures
def test_expired() -> None:
    codec = _codec(ttl_s=60.0)
    token = _seal(codec)
    assert codec.open(token, now=NOW + 59.0).state.session_id == "s1"
    assert _failure(codec, token, now=NOW + 61.0) is ResumeFailure.EXPIRED


def test_issued_in_the_future_beyond_clock_skew_is_invalid() -> None:
    codec = _codec()
    assert codec.open(_seal(codec, now=NOW + 30.0), now=NOW).age_s == 0.0  # within skew
    assert _failure(codec, _seal(codec, now=NOW + 3600.0)) is ResumeFailure.INVALID


@pytest.mark.parametrize("position", [0, 5, 20, -30, -1])
def test_any_changed_body_character_is_invalid(position: int) -> None:
    codec = _codec()
    token = _seal(codec)
    header, body = token.rsplit(".", 1)
    index = position % len(body)
    # Flip a bit of the decoded byte under this character (swapping characters could only hit padding bits).
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[index * 3 // 4] ^= 0x01
    tampered = f"{header}.{base64.urlsafe_b64encode(bytes(raw)).decode().rstrip('=')}"
    assert tampered != token
    assert _failure(codec, tampered) is ResumeFailure.INVALID


def test_truncated_body_is_invalid_or_malformed() -> None:
    codec = _codec()
    token = _seal(codec)
    assert _failure(codec, token[:-8]) in {ResumeFailure.INVALID, ResumeFailure.MALFORMED}


def test_header_moved_to_another_known_key_is_invalid() -> None:
    ring = KeyRing(KEY_A, [KEY_B])
    codec = _codec(ring)
    token = _seal(codec)
    other_kid = KeyRing(KEY_B).current_kid
    _, _, body = token.split(".")
    assert _failure(codec, f"v1.{other_kid}.{body}") is ResumeFailure.INVALID


def test_foreign_key() -> None:
    token = _seal(_codec(KeyRing(KEY_B)))
    assert _failure(_codec(KeyRing(KEY_A)), token) is ResumeFailure.FOREIGN_KEY


def test_oversized_is_refused_before_any_work() -> None:
    codec = _codec()
    assert _failure(codec, "v1.x." + "A" * codec.max_token_chars) is ResumeFailure.OVERSIZED


@pytest.mark.parametrize(
    "token",
    [
        "",
        "hello",
        "v1.onlytwo",
        "v1.a.b.c",
        "v2.AAAAAAAA.AAAA",
        "v1.AAAAAAAA.AAAA",  # too short for nonce and tag
        "v1.AAAAAAAA.@@@@",
        "v1.AAAAAAAA.A",  # impossible base64 length
        "v1.ÄÄ.AAAA",
    ],
)
def test_malformed(token: str) -> None:
    assert _failure(_codec(), token) is ResumeFailure.MALFORMED


def test_authentic_but_unknown_state_shape_is_malformed() -> None:
    ring = KeyRing(KEY_A)
    header = f"v1.{ring.current_kid}"
    body = ring.seal(header, json.dumps({"session_id": "s1", "wat": 1}).encode())
    assert _failure(_codec(ring), f"{header}.{body}") is ResumeFailure.MALFORMED


def test_failure_codes_match_the_protocol() -> None:
    assert {f.value for f in ResumeFailure} == set(typing.get_args(protocol.ResumeFailureCode))


# -------------------------------------------------------------------------------------------- rotation
def test_rotation_keeps_tokens_of_the_previous_key() -> None:
    old = _codec(KeyRing(KEY_A))
    token = _seal(old)
    rotated = _codec(KeyRing(KEY_B, [KEY_A]))
    assert rotated.open(token, now=NOW).state.session_id == "s1"
    fresh = _seal(rotated)
    assert fresh.split(".")[1] == KeyRing(KEY_B).current_kid  # new tokens use the new key
    # Once the previous key is dropped, its tokens are foreign; the new ones keep working.
    after = _codec(KeyRing(KEY_B))
    assert _failure(after, token) is ResumeFailure.FOREIGN_KEY
    assert after.open(fresh, now=NOW).state.voice == "jf_alpha"


def test_key_rules() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        derive_key("short")
    assert derive_key(KEY_A) != derive_key(KEY_B)
    secret = generate_secret()
    assert len(secret) >= 32
    assert secret != generate_secret()


# ------------------------------------------------------------------------------------- budget and size
def test_history_is_cut_to_the_message_budget_and_opens_with_the_user() -> None:
    codec = _codec(messages=4)  # system prompt + 3
    history = _history(*(f"message {i}" for i in range(10)))
    state = codec.open(_seal(codec, history), now=NOW).state
    assert [t.content for t in state.history] == ["message 8", "message 9"]
    assert state.history[0].role == "user"


def test_history_is_cut_to_the_character_budget() -> None:
    codec = _codec(chars=300)
    history = _history(*("x" * 100 for _ in range(8)))
    state = codec.open(_seal(codec, history), now=NOW).state
    assert sum(len(t.content) for t in state.history) <= 300
    assert state.history[0].role == "user"


def test_one_message_over_the_budget_keeps_its_end() -> None:
    codec = _codec(chars=200)
    history = [ResumeTurn(role="user", content="a" * 500 + "the end")]
    (turn,) = codec.open(_seal(codec, history), now=NOW).state.history
    assert len(turn.content) == 200
    assert turn.content.endswith("the end")


def test_a_smaller_budget_on_the_opening_pod_applies() -> None:
    token = _seal(_codec(messages=24), _history(*(f"m{i}" for i in range(20))))
    state = _codec(messages=3).open(token, now=NOW).state
    assert [t.content for t in state.history] == ["m18", "m19"]


def test_largest_history_the_budget_allows_fits_the_frame() -> None:
    codec = _codec()
    # 4-byte UTF-8 characters, the whole character budget, the whole message budget.
    history = _history(*("🙂" * (8000 // 23) for _ in range(23)))
    token = _seal(codec, history)
    state = codec.open(token, now=NOW).state
    assert state.history == history  # nothing had to go
    assert len(token) <= codec.max_token_chars
    start = protocol.StartMessage(resume_token=token).model_dump_json()
    assert len(start.encode()) <= FRAME


def test_pathological_json_is_trimmed_to_fit_the_frame() -> None:
    codec = _codec()
    # Control characters take 6 bytes each in JSON: the budget's characters would not fit; oldest go.
    history = _history(*("\x01" * 1000 for _ in range(8)))
    token = _seal(codec, history)
    assert len(token) <= codec.max_token_chars
    state = codec.open(token, now=NOW).state
    assert 0 < len(state.history) < 8
    assert state.history[0].role == "user"


def test_settings_refuse_a_budget_whose_token_cannot_fit_a_frame() -> None:
    with pytest.raises(ValidationError, match="does not fit max_frame_bytes"):
        SessionSettings(max_frame_bytes=8_000, history_max_chars=8_000)
    SessionSettings(max_frame_bytes=8_000, history_max_chars=900)
    assert token_chars_for(1000) < 8_000


# --------------------------------------------------------------------------------------------- settings
def test_keys_from_mounted_files_with_rotation(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY_B + "\n")
    (tmp_path / "previous").write_text(KEY_A)
    settings = SessionSettings(
        resume_key_file=tmp_path / "key", resume_previous_key_file=tmp_path / "previous", resume_key=KEY_A
    )
    ring = key_ring_from_settings(settings)
    assert ring is not None
    assert ring.current_kid == KeyRing(KEY_B).current_kid  # the file overrides the variable
    assert ring.kids == {KeyRing(KEY_A).current_kid, KeyRing(KEY_B).current_kid}
    # Outside a rotation the Secret has no previous key: its file is simply absent.
    (tmp_path / "previous").unlink()
    alone = key_ring_from_settings(settings)
    assert alone is not None
    assert alone.kids == {KeyRing(KEY_B).current_kid}


def test_key_setting_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        key_ring_from_settings(SessionSettings(resume_key_file=tmp_path / "missing"))
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        key_ring_from_settings(SessionSettings(resume_key_file=tmp_path / "empty"))
    with pytest.raises(ValueError, match="without a current"):
        key_ring_from_settings(SessionSettings(resume_previous_key=KEY_A))
    with pytest.raises(ValueError, match="at least 32"):
        key_ring_from_settings(SessionSettings(resume_key="too short"))


def test_no_key_configured_means_a_key_of_this_process(caplog: pytest.LogCaptureFixture) -> None:
    first = codec_from_settings(SessionSettings())
    second = codec_from_settings(SessionSettings())
    assert "no resume key configured" in caplog.text
    assert _failure(second, _seal(first)) is ResumeFailure.FOREIGN_KEY


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICECHAT_SESSION_RESUME_KEY", KEY_A)
    monkeypatch.setenv("VOICECHAT_SESSION_RESUME_TTL_S", "90")
    settings = SessionSettings()
    codec = codec_from_settings(settings)
    assert codec.ttl_s == 90.0
    assert _codec(KeyRing(KEY_A)).open(_seal(codec), now=NOW).state.session_id == "s1"


# --------------------------------------------------------------------------------------------- metrics
def _resumes(outcome: str) -> float:
    return REGISTRY.get_sample_value("voicechat_session_resumes_total", {"outcome": outcome}) or 0.0


def test_attempt_counts_outcomes_and_never_raises() -> None:
    codec = _codec()
    ok_before, bad_before, foreign_before = _resumes("ok"), _resumes("malformed"), _resumes("foreign_key")
    assert isinstance(attempt(codec, _seal(codec, now=NOW), now=NOW), Resumed)
    bad = attempt(codec, "garbage", now=NOW)
    assert isinstance(bad, ResumeError)
    assert bad.failure is ResumeFailure.MALFORMED
    assert isinstance(attempt(codec, _seal(_codec(KeyRing(KEY_B))), now=NOW), ResumeError)
    assert _resumes("ok") == ok_before + 1
    assert _resumes("malformed") == bad_before + 1
    assert _resumes("foreign_key") == foreign_before + 1
