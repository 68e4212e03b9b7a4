"""The Bedrock stand-in speaks the real wire format: boto3 itself (its SigV4 signer, its REST-JSON error
parser and its event-stream decoder, which checks both CRC32s) talks to it as to Bedrock Runtime."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from tests.support.bedrock_standin import BedrockStandIn, Reply, encode_message, event

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


def client(standin: BedrockStandIn, region: str | None = None) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=standin.url,
        region_name=region or standin.region,
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="secret",
        config=Config(retries={"total_max_attempts": 1}),
    )


def converse(c: Any, text: str = "Hello?", **kwargs: Any) -> Any:
    return c.converse_stream(
        modelId=MODEL, messages=[{"role": "user", "content": [{"text": text}]}], **kwargs
    )


def test_boto3_parses_the_framing_and_the_request_is_recorded() -> None:
    with BedrockStandIn(region="eu-west-1", replies=["Paris is the capital."]) as standin:
        response = converse(
            client(standin),
            system=[{"text": "Be brief."}],
            inferenceConfig={"temperature": 0.2, "maxTokens": 50},
        )
        events = list(response["stream"])
        assert (
            response["ResponseMetadata"]["HTTPHeaders"]["content-type"]
            == "application/vnd.amazon.eventstream"
        )
    kinds = [next(iter(e)) for e in events]
    assert kinds == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert events[0]["messageStart"] == {"role": "assistant"}
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == "Paris is the capital."
    assert events[6]["messageStop"]["stopReason"] == "end_turn"
    assert events[7]["metadata"]["usage"]["outputTokens"] == 4
    assert isinstance(events[7]["metadata"]["metrics"]["latencyMs"], int)
    # The model id travels URL-encoded in the path (its colon); the stand-in decodes it.
    assert standin.model_ids == [MODEL]
    assert standin.last_request["system"] == [{"text": "Be brief."}]
    assert standin.last_request["inferenceConfig"] == {"temperature": 0.2, "maxTokens": 50}
    assert standin.last_request["messages"] == [{"role": "user", "content": [{"text": "Hello?"}]}]
    assert standin.request_headers[-1]["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
    assert (standin.completed, standin.cancelled) == (1, 0)


def test_max_tokens_cuts_the_reply() -> None:
    with BedrockStandIn(reply="one two three four") as standin:
        events = list(converse(client(standin), inferenceConfig={"maxTokens": 1})["stream"])
    deltas = [e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e]
    assert deltas == ["one"]
    assert next(e["messageStop"] for e in events if "messageStop" in e)["stopReason"] == "max_tokens"


def test_a_corrupted_frame_fails_botocores_crc_check() -> None:
    """The encoder's CRCs are the ones botocore checks: flipping a payload byte must be caught."""
    good = event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}})
    buffer = EventStreamBuffer()
    buffer.add_data(good)
    (message,) = list(buffer)
    assert message.headers[":event-type"] == "contentBlockDelta"
    bad = bytearray(good)
    bad[-6] ^= 0xFF
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(bad))
    with pytest.raises(Exception, match=r"(?i)checksum|crc"):
        list(buffer)
    # The prelude checksum is the CRC32 of the first 8 bytes.
    total, headers_length, prelude_crc = struct.unpack("!III", good[:12])
    assert (total, prelude_crc) == (len(good), zlib.crc32(good[:8]))
    assert headers_length > 0
    assert encode_message({}, b"")[:8] == struct.pack("!II", 16, 0)


def test_wrong_region_is_refused_like_aws() -> None:
    with BedrockStandIn(region="us-west-2") as standin:
        with pytest.raises(ClientError) as raised:
            converse(client(standin, region="eu-central-1"))
        assert standin.requests == []
        assert standin.rejected == 1
    error = raised.value.response
    assert error["Error"]["Code"] == "InvalidSignatureException"
    assert "region" in error["Error"]["Message"]
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_unknown_model_is_a_validation_exception() -> None:
    with BedrockStandIn(models={"some.other-model-v1:0"}) as standin, pytest.raises(ClientError) as raised:
        converse(client(standin))
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert "model identifier is invalid" in raised.value.response["Error"]["Message"]


def test_converse_rules_are_enforced() -> None:
    """Like Bedrock: the first message is the user's and roles alternate."""
    with BedrockStandIn() as standin:
        c = client(standin)
        with pytest.raises(ClientError, match="alternate"):
            c.converse_stream(
                modelId=MODEL,
                messages=[
                    {"role": "user", "content": [{"text": "a"}]},
                    {"role": "user", "content": [{"text": "b"}]},
                ],
            )
        with pytest.raises(ClientError, match="start with a user message"):
            c.converse_stream(modelId=MODEL, messages=[{"role": "assistant", "content": [{"text": "a"}]}])


def test_throttling_is_http_429_with_the_error_type_header() -> None:
    with BedrockStandIn(replies=[Reply(throttle=True), "Fine now."]) as standin:
        c = client(standin)
        with pytest.raises(ClientError) as raised:
            converse(c)
        again = "".join(
            e["contentBlockDelta"]["delta"]["text"] for e in converse(c)["stream"] if "contentBlockDelta" in e
        )
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert again == "Fine now."
    assert len(standin.requests) == 2


@pytest.mark.parametrize("exception", ["modelStreamErrorException", "throttlingException"])
def test_mid_stream_exception_event(exception: str) -> None:
    reply = Reply(text="one two three four", exception=exception, exception_after_tokens=2)
    with BedrockStandIn(replies=[reply]) as standin:
        received: list[str] = []
        stream = converse(client(standin))["stream"]

        def read_all() -> None:
            for e in stream:
                if "contentBlockDelta" in e:
                    received.append(e["contentBlockDelta"]["delta"]["text"])

        with pytest.raises(EventStreamError) as raised:
            read_all()
    assert received == ["one ", "two "]
    assert raised.value.response["Error"]["Code"] == exception
    assert raised.value.response["Error"]["Message"] == "The model stopped unexpectedly."


def test_closing_the_stream_is_seen_as_a_cancel() -> None:
    with BedrockStandIn(reply=Reply(text=" ".join(["word"] * 200), token_delay_s=0.02)) as standin:
        stream = converse(client(standin))["stream"]
        events: Iterator[dict[str, Any]] = iter(stream)
        assert "messageStart" in next(events)
        assert "contentBlockDelta" in next(events)
        stream.close()
        assert standin.stream_cut.wait(timeout=10), "the stand-in did not notice the closed stream"
        assert (standin.completed, standin.cancelled) == (0, 1)


def test_no_authorization_is_refused() -> None:
    import urllib.error
    import urllib.request

    with BedrockStandIn() as standin:
        request = urllib.request.Request(f"{standin.url}/model/m/converse-stream", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 403
    assert raised.value.headers["x-amzn-ErrorType"].startswith("MissingAuthenticationTokenException")
