"""llm_provider=bedrock: the session service streams replies from Bedrock's ConverseStream through boto3,
against the Bedrock stand-in (the real event-stream framing and SigV4 scope check) — mapping of the history,
spoken and typed turns end to end, throttling and mid-stream exceptions, barge-in closing the stream, and
readiness that says why Bedrock cannot be used."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tests.conftest import REPO_ROOT
from tests.support.abuse import wait_until
from tests.support.bedrock_standin import BedrockStandIn, Reply
from tests.support.session_app import SCRIPT, InProcessService, metric, session_app
from tests.support.ws_client import VoiceChatClient
from voicechat_operator.env import env_name
from voicechat_operator.render import Owner, render_config_map
from voicechat_operator.spec import parse_spec
from voicechat_session.backends.fake import utterance_tone
from voicechat_session.bedrock import converse_request, map_error
from voicechat_session.history import ChatMessage
from voicechat_session.llm import LLMError, LLMThrottled, LLMUnavailable
from voicechat_session.settings import SessionSettings

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
REGION = "eu-west-1"
REPLY = "Paris is the capital of France. It is on the Seine."
RATE = 16_000


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy static credentials through boto3's default chain, and nothing else it could find."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")


@pytest.fixture
def standin() -> Iterator[BedrockStandIn]:
    with BedrockStandIn(region=REGION, reply=REPLY, models={MODEL}) as running:
        yield running


@contextlib.asynccontextmanager
async def bedrock_app(standin: BedrockStandIn, **overrides: Any) -> AsyncIterator[InProcessService]:
    settings: dict[str, Any] = {
        "llm_provider": "bedrock",
        "llm_model": MODEL,
        "bedrock_region": REGION,
        "bedrock_endpoint_url": standin.url,
        "llm_url": "http://127.0.0.1:9/v1",  # nothing there: every reply must come from Bedrock
        **overrides,
    }
    async with session_app(**settings) as service:
        yield service


def texts(message: dict[str, Any]) -> list[str]:
    return [block["text"] for block in message["content"]]


# --- mapping ---------------------------------------------------------------------------------------------


def test_history_maps_to_converse_messages() -> None:
    settings = SessionSettings(
        llm_provider="bedrock", llm_model=MODEL, llm_temperature=0.7, llm_max_tokens=64
    )
    messages = [
        ChatMessage("system", "You are brief."),
        ChatMessage("assistant", "left over from trimming"),
        ChatMessage("user", "Hi."),
        ChatMessage("user", "Are you there?"),
        ChatMessage("assistant", "Yes."),
        ChatMessage("assistant", "   "),
        ChatMessage("user", "Good."),
    ]
    request = converse_request(messages, MODEL, settings)
    assert request == {
        "modelId": MODEL,
        "system": [{"text": "You are brief."}],
        "messages": [
            {"role": "user", "content": [{"text": "Hi."}, {"text": "Are you there?"}]},
            {"role": "assistant", "content": [{"text": "Yes."}]},
            {"role": "user", "content": [{"text": "Good."}]},
        ],
        "inferenceConfig": {"temperature": 0.7, "maxTokens": 64},
    }
    assert converse_request(messages, MODEL, settings, max_tokens=1)["inferenceConfig"]["maxTokens"] == 1
    with pytest.raises(LLMError, match="no user message"):
        converse_request([ChatMessage("system", "x"), ChatMessage("assistant", "y")], MODEL, settings)


def test_bedrock_needs_a_model_id() -> None:
    with pytest.raises(ValidationError, match="llm_provider=bedrock needs llm_model"):
        SessionSettings(llm_provider="bedrock")


def test_errors_map_to_codes() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    def client_error(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
            "ConverseStream",
        )

    assert map_error(client_error("ThrottlingException", 429), "x").code == "llm_throttled"
    assert map_error(client_error("throttlingException", 200), "x").code == "llm_throttled"
    assert map_error(client_error("ServiceUnavailableException", 503), "x").code == "llm_unavailable"
    assert map_error(client_error("ModelTimeoutException", 408), "x").code == "llm_timeout"
    assert map_error(client_error("AccessDeniedException", 403), "x").code == "llm_error"
    assert map_error(client_error("modelStreamErrorException", 200), "x").code == "llm_error"
    assert isinstance(map_error(EndpointConnectionError(endpoint_url="http://h"), "x"), LLMUnavailable)
    assert "credentials" in str(map_error(NoCredentialsError(), "x"))


# --- end to end ------------------------------------------------------------------------------------------


async def test_typed_and_spoken_turns_with_history(standin: BedrockStandIn) -> None:
    async with bedrock_app(standin) as service, VoiceChatClient.connect(service.ws_url) as client:
        # The start-up check: one token, with the system prompt; its TTFT is the warm TTFT shown.
        check = standin.requests[0]
        assert check["inferenceConfig"]["maxTokens"] == 1
        assert check["system"] == [{"text": service.pod.system_prompt}]
        info = (await service.get("/api/info")).json()
        assert info["llm"]["model"] == MODEL
        assert info["llm"]["warm_ttft_ms"] > 0
        assert (await service.get("/readyz")).status_code == 200

        await client.send({"type": "text", "text": "Where is Paris?"})
        turn = await client.wait_turn(timeout_s=20)
        assert turn.assistant_final == REPLY
        assert "".join(turn.assistant_deltas) == REPLY
        assert turn.audio_seconds > 0
        assert turn.metrics["llm_ttft_ms"] > 0
        first = standin.last_request
        assert first["messages"] == [{"role": "user", "content": [{"text": "Where is Paris?"}]}]
        assert first["system"] == [{"text": service.pod.system_prompt}]
        assert first["inferenceConfig"] == {
            "temperature": service.settings.llm_temperature,
            "maxTokens": service.settings.llm_max_tokens,
        }
        assert standin.model_ids[-1] == MODEL

        # A spoken turn: endpointed, transcribed (the fake STT), answered by Bedrock with the history.
        mark = len(client.events)
        await client.start(sample_rate=RATE)
        await client.stream_audio(utterance_tone(0, 0.6, RATE), RATE, trailing_silence_s=0.8)
        spoken = await client.wait_turn(after=mark, timeout_s=20)
        assert spoken.transcript == SCRIPT[0]
        assert spoken.assistant_final == REPLY
        assert [(m["role"], texts(m)) for m in standin.last_request["messages"]] == [
            ("user", ["Where is Paris?"]),
            ("assistant", [REPLY]),
            ("user", [SCRIPT[0]]),
        ]
        assert client.errors() == []
    assert standin.completed == 3
    # Finished streams hand their connection back to boto3's pool: the start-up check and both turns
    # shared one (no new TCP or TLS handshake in a turn's time to first token).
    assert standin.connections == 1


async def test_throttling_is_an_error_event_and_the_session_goes_on(standin: BedrockStandIn) -> None:
    errors_before = metric("voicechat_session_errors_total", code="llm_throttled")
    async with bedrock_app(standin) as service, VoiceChatClient.connect(service.ws_url) as client:
        standin.replies.append(Reply(throttle=True))
        requests_before = len(standin.requests)
        await client.send({"type": "text", "text": "Are you there?"})
        error = await client.wait_for("error", timeout_s=10)
        assert (error["code"], error["fatal"]) == ("llm_throttled", False)
        assert error["message"].startswith("the language model is busy")
        turn = await client.wait_turn(timeout_s=10)
        assert turn.assistant_final is None
        # No retries behind the user's back: a voice turn reports the refusal at once.
        assert len(standin.requests) == requests_before + 1

        mark = len(client.events)
        await client.send({"type": "text", "text": "Say it again."})
        again = await client.wait_turn(after=mark, timeout_s=20)
        assert again.assistant_final == REPLY
        assert client.errors(after=mark) == []
        # The throttled question stays, merged with the next one into one user message of two blocks.
        assert [(m["role"], texts(m)) for m in standin.last_request["messages"]] == [
            ("user", ["Are you there?\nSay it again."])
        ]
    assert metric("voicechat_session_errors_total", code="llm_throttled") == errors_before + 1


@pytest.mark.parametrize(
    ("exception", "code"),
    [("modelStreamErrorException", "llm_error"), ("throttlingException", "llm_throttled")],
)
async def test_mid_stream_exception_keeps_what_arrived(
    standin: BedrockStandIn, exception: str, code: str
) -> None:
    async with bedrock_app(standin) as service, VoiceChatClient.connect(service.ws_url) as client:
        standin.replies.append(Reply(text=REPLY, exception=exception, exception_after_tokens=2))
        await client.send({"type": "text", "text": "Tell me."})
        error = await client.wait_for("error", timeout_s=10)
        assert (error["code"], error["fatal"]) == (code, False)
        turn = await client.wait_turn(timeout_s=10)
        # What arrived before the exception is still spoken.
        assert turn.assistant_final == "Paris is"
        assert turn.audio != b""
        mark = len(client.events)
        await client.send({"type": "text", "text": "Again."})
        assert (await client.wait_turn(after=mark, timeout_s=20)).assistant_final == REPLY
    assert metric("voicechat_session_llm_streams_active") == 0


async def test_interrupt_closes_the_bedrock_stream(standin: BedrockStandIn) -> None:
    cancelled_before = metric("voicechat_session_llm_streams_cancelled_total")
    async with bedrock_app(standin) as service, VoiceChatClient.connect(service.ws_url) as client:
        standin.replies.append(Reply(text=" ".join(["word"] * 400), token_delay_s=0.05))
        await client.send({"type": "text", "text": "Tell me a long story."})
        first = await client.wait_for("assistant", final=False, timeout_s=20)
        mark = len(client.events)
        await client.send({"type": "interrupt"})
        interrupted = await client.wait_for("interrupted", after=mark, timeout_s=10)
        assert interrupted["turn_id"] == first["turn_id"]
        assert (await client.wait_turn(after=mark, timeout_s=10)).metrics["interrupted"]
        # Bedrock sees the connection go long before the 20 s the reply would take.
        assert await asyncio.to_thread(standin.stream_cut.wait, 5), "the Bedrock stream was not closed"
        assert standin.cancelled == 1
        assert metric("voicechat_session_llm_streams_cancelled_total") == cancelled_before + 1
        assert metric("voicechat_session_llm_streams_active") == 0
        mark = len(client.events)
        await client.send({"type": "text", "text": "Where is Paris?"})
        assert (await client.wait_turn(after=mark, timeout_s=20)).assistant_final == REPLY
        assert client.errors() == []


async def test_spoken_barge_in_closes_the_bedrock_stream(standin: BedrockStandIn) -> None:
    story = " ".join(f"Sentence number {i} of a long story, told slowly." for i in range(40))
    async with bedrock_app(standin) as service, VoiceChatClient.connect(service.ws_url) as client:
        # About 18 s of generation: Bedrock is still writing when the user talks over the reply.
        standin.replies.append(Reply(text=story, token_delay_s=0.05))
        await client.start(sample_rate=RATE)
        await client.send({"type": "text", "text": "Tell me a story."})
        audio_start = await client.wait_for("audio_start", timeout_s=20)
        await client.wait_event(lambda e: isinstance(e, bytes), timeout_s=20)  # the assistant is talking
        await client.stream_audio(utterance_tone(1, 0.6, RATE), RATE, trailing_silence_s=0.8)
        interrupted = await client.wait_for("interrupted", turn_id=audio_start["turn_id"], timeout_s=10)
        assert interrupted["reason"] == "barge_in"
        assert await asyncio.to_thread(standin.stream_cut.wait, 5), "the Bedrock stream was not closed"
        assert standin.cancelled == 1
        # The barge-in utterance is the next turn, answered with the interrupted reply in the history.
        turn = await client.wait_for("transcript", final=True, text=SCRIPT[1], timeout_s=20)
        await client.wait_for("turn_metrics", turn_id=turn["turn_id"], timeout_s=20)
        roles = [m["role"] for m in standin.last_request["messages"]]
        assert roles == ["user", "assistant", "user"]
        assert texts(standin.last_request["messages"][-1]) == [SCRIPT[1]]


async def test_a_stalled_first_token_times_out_and_closes_the_stream(standin: BedrockStandIn) -> None:
    async with (
        bedrock_app(standin, llm_first_token_timeout_s=0.5) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        standin.replies.append(Reply(first_event_delay_s=30))
        await client.send({"type": "text", "text": "Hello?"})
        error = await client.wait_for("error", timeout_s=10)
        assert error["code"] == "llm_timeout"
        assert await asyncio.to_thread(standin.stream_cut.wait, 5)


async def test_wrong_region_is_the_readiness_reason(standin: BedrockStandIn) -> None:
    async with bedrock_app(standin, bedrock_region="us-east-1") as service:
        ready = await service.get("/readyz")
        assert ready.status_code == 503
        reason = ready.json()["reason"]
        assert reason.startswith("Bedrock check failed (llm_error)")
        assert "InvalidSignatureException" in reason
        assert "region" in reason
        # The pod stays up (livez) and refuses sessions with that reason.
        assert (await service.get("/livez")).status_code == 200
        async with VoiceChatClient.connect(service.ws_url, wait_ready=False) as client:
            error = await client.wait_for("error", timeout_s=10)
            assert (error["code"], error["fatal"]) == ("not_ready", True)
            assert error["message"] == reason
    assert standin.requests == []


async def test_no_credentials_is_the_readiness_reason(
    standin: BedrockStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    async with bedrock_app(standin) as service:
        ready = await service.get("/readyz")
        assert ready.status_code == 503
        assert "no AWS credentials" in ready.json()["reason"]
    assert standin.requests == []


async def test_readiness_recovers_once_bedrock_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A check that failed is retried: the pod becomes ready without a restart."""
    monkeypatch.setattr("voicechat_session.serving.BEDROCK_RECHECK_S", (0.05, 0.1))
    with BedrockStandIn(region=REGION, replies=[Reply(throttle=True)], reply=REPLY) as standin:
        async with bedrock_app(standin) as service:
            ready = await service.get("/readyz")
            if ready.status_code == 503:  # the recheck may already have passed on a slow machine
                assert "ThrottlingException" in ready.json()["reason"]
            await wait_until(lambda: service.pod.not_ready_reason is None, 10, "the Bedrock recheck to pass")
            assert (await service.get("/readyz")).status_code == 200
            assert (await service.get("/api/info")).json()["llm"]["warm_ttft_ms"] > 0
        assert standin.rejected == 1


async def test_unknown_model_is_reported(standin: BedrockStandIn) -> None:
    async with bedrock_app(standin, llm_model="no.such-model-v1:0") as service:
        reason = (await service.get("/readyz")).json()["reason"]
        assert "ValidationException" in reason
        assert "model identifier is invalid" in reason


def test_throttled_is_an_llm_error() -> None:
    """A throttled reply is handled wherever LLM errors are (the reply pipeline catches LLMError)."""
    assert issubclass(LLMThrottled, LLMError)


# --- what the operator renders ----------------------------------------------------------------------------
async def test_the_operators_bedrock_settings_drive_the_session_service(standin: BedrockStandIn) -> None:
    """The session settings the operator renders for an `engine: bedrock` VoiceChat (its ConfigMap, read by the
    pods as environment) are enough for the service to answer through Bedrock: no LLM URL, no warm-up report."""
    raw = yaml.safe_load((REPO_ROOT / "operator" / "examples" / "voicechat-bedrock.yaml").read_text())
    raw["spec"]["llm"] |= {"model": MODEL, "bedrock": {"region": REGION, "endpointUrl": standin.url}}
    owner = Owner(name="bedrock-demo", namespace="default", uid="u")
    config = render_config_map(owner, parse_spec("bedrock-demo", raw["spec"]))["data"]
    rendered = {
        name: config[env_name(SessionSettings, name)]
        for name in SessionSettings.model_fields
        if name.startswith(("llm_", "bedrock_")) and env_name(SessionSettings, name) in config
    }
    assert rendered == {
        "llm_provider": "bedrock",
        "llm_model": MODEL,
        "bedrock_region": REGION,
        "bedrock_endpoint_url": standin.url,
    }
    async with session_app(**rendered) as service, VoiceChatClient.connect(service.ws_url) as client:
        await client.send({"type": "text", "text": "Where is Paris?"})
        turn = await client.wait_turn(timeout_s=20)
        assert turn.assistant_final == REPLY
        assert standin.model_ids[-1] == MODEL
        assert client.errors() == []
