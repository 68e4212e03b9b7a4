"""Soak (issue 13, marker ``soak``, part of ``make test``): connect/close churn with turns, a client that
stops reading, and a slowloris of half-open HTTP upgrades, all at once against the in-process service.
Afterwards: no session registered, file descriptors back to where they were, RSS growth bounded. The figures
are printed (``-s``) for the README's security section."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.support.abuse import flood, non_reading_client, wait_until
from tests.support.resources import open_fds, rss_bytes
from tests.support.session_app import metric, session_app
from tests.support.ws_client import VoiceChatClient

pytestmark = pytest.mark.soak

CHURN_CLIENTS = 4
CHURN_ROUNDS = 40
SLOWLORIS = 300


async def _churn(url: str, rounds: int) -> int:
    done = 0
    for i in range(rounds):
        async with VoiceChatClient.connect(url) as client:
            if i % 4 == 0:
                await client.send({"type": "text", "text": f"turn {i}"})
                await client.wait_turn(timeout_s=30)
            done += 1
    return done


async def _slowloris(host: str, port: int, count: int) -> float:
    """Open ``count`` upgrades that never finish their headers; seconds until the server dropped them all."""
    streams = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
        streams.append((reader, writer))
    started = time.monotonic()
    for reader, _ in streams:
        async with asyncio.timeout(60):
            await reader.read()
    elapsed = time.monotonic() - started
    for _, writer in streams:
        writer.close()
    return elapsed


async def test_soak_churn_non_reader_and_slowloris() -> None:
    async with session_app(
        handshake_timeout_s=2.0, send_timeout_s=1.0, max_session_s=20.0, max_sessions=16
    ) as service:
        host, port = service.base_url.removeprefix("http://").split(":")
        # Warm up once so lazily created things (pools, caches) are in the baseline.
        await _churn(service.ws_url, 2)
        fds_before, rss_before = open_fds(), rss_bytes()
        started = time.monotonic()

        async def non_reader() -> int:
            async with non_reading_client(service.ws_url) as ws:
                await ws.send(json.dumps({"type": "text", "text": "w" * 1999}))
                sent = await flood(ws, seconds=15)
                await wait_until(lambda: len(service.registry) <= CHURN_CLIENTS, 30, "the non-reader to go")
                return sent

        results = await asyncio.gather(
            *(_churn(service.ws_url, CHURN_ROUNDS) for _ in range(CHURN_CLIENTS)),
            non_reader(),
            _slowloris(host, int(port), SLOWLORIS),
        )
        await wait_until(lambda: len(service.registry) == 0, 30, "every session to end")
        fds_after = 0
        deadline = time.monotonic() + 20
        while (fds_after := open_fds()) > fds_before + 2:  # closed sockets leave the table shortly after
            assert time.monotonic() < deadline, f"descriptors {fds_before} → {fds_after}"
            await asyncio.sleep(0.1)
        growth = rss_bytes() - rss_before
        churned = sum(results[:CHURN_CLIENTS])
        assert churned == CHURN_CLIENTS * CHURN_ROUNDS
        assert results[-1] < 15  # every half-open connection dropped soon after the 2 s deadline
        assert growth < 96 * 2**20
        assert metric("voicechat_session_active_sessions") == 0
        print(
            f"soak: {churned} sessions churned, non-reader sent {results[CHURN_CLIENTS]} requests, "
            f"{SLOWLORIS} half-open upgrades dropped after {results[-1]:.1f} s, "
            f"fds {fds_before} → {fds_after}, RSS growth {growth / 2**20:.1f} MiB, "
            f"{time.monotonic() - started:.0f} s"
        )
