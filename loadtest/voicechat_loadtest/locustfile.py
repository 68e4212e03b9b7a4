"""Locust users built on the load test's client, for load from many machines (Locust master/worker mode).

    locust -f $(python -c 'import voicechat_loadtest.locustfile as m; print(m.__file__)') \\
        --host ws://SESSION:8080/ws --users 50 --spawn-rate 2            # add --master / --worker

Each user connects once (request ``connect``), then speaks one shipped utterance per task; every turn fires
``time_to_first_audio`` and ``turn`` requests with the client-measured latencies (milliseconds), so Locust's
statistics, charts and CSVs show connect latency and time to first audio percentiles. A failed turn fires
a failure with its error code; a dropped connection reconnects on the next task. Against a service that
requires access tokens, set ``VOICECHAT_LOADTEST_AUTH_KEY_FILE`` to a file holding its HS256 key.
"""

from __future__ import annotations

import time

from locust import User, between, task
from locust.env import Environment

from voicechat_loadtest.client import ConnectSample, TurnSample, options_from_environment
from voicechat_loadtest.speech import load_speech
from voicechat_loadtest.sync_client import SyncVoiceClient

REQUEST_TYPE = "WS"
SPEECH = load_speech()


class VoiceTurnError(Exception):
    """A connect or turn that failed; the message starts with the error code so Locust groups by it."""


class VoiceChatUser(User):
    """A person talking to the assistant: connect, then speak, listen, think, speak again."""

    wait_time = between(1, 3)
    options = options_from_environment()
    _origin = time.perf_counter()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self._client: SyncVoiceClient | None = None
        self._turn = 0
        self._id = id(self)

    def _fire(self, name: str, seconds: float | None, error: str | None, message: str | None) -> None:
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=(seconds or 0.0) * 1000,
            response_length=0,
            exception=VoiceTurnError(f"{error}: {message}") if error else None,
            context={},
        )

    def _connect(self) -> SyncVoiceClient | None:
        if not self.host:
            raise VoiceTurnError(
                "no target: pass --host ws://HOST:PORT/ws (or the service's http://HOST:PORT)"
            )
        client = SyncVoiceClient(self.host, self._id, self._origin, self.options)
        sample: ConnectSample = client.connect()
        self._fire("connect", sample.connect_s, sample.error, sample.error_message)
        return client if sample.error is None else None

    def on_start(self) -> None:
        self._client = self._connect()

    @task
    def speak(self) -> None:
        if self._client is None:
            self._client = self._connect()
            if self._client is None:
                return
        speech = SPEECH[self._turn % len(SPEECH)]
        self._turn += 1
        sample: TurnSample = self._client.turn(speech)
        self._fire("time_to_first_audio", sample.ttfa_s, sample.error, sample.error_message)
        self._fire("turn", sample.turn_s, sample.error, sample.error_message)
        if sample.error is None and not sample.matched:
            self._fire("transcript_match", 0.0, "transcript_mismatch", f"heard {sample.transcript!r}")
        if sample.error == "closed":
            self._client = None

    def on_stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
