"""Session mechanics that need no models: a client that stops reading, timers that do not
wait for audio, and the admission registry."""

from __future__ import annotations

import asyncio

import pytest
from starlette.websockets import WebSocketDisconnect

from services.server import session as session_mod
from services.server.admission import Admission, Full
from services.server.agents import Agent
from services.server.session import Services, Session
from shared.config import ServerSettings
from shared.protocol import InitMessage


class StuckSocket:
    """A WebSocket whose peer never reads: every send blocks forever."""

    def __init__(self) -> None:
        self.closed_with: int | None = None

    async def send_text(self, _: str) -> None:
        await asyncio.Event().wait()

    async def send_bytes(self, _: bytes) -> None:
        await asyncio.Event().wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = code


def make_session(ws: object) -> Session:
    cfg = ServerSettings(streaming_stt=False)
    services = Services(stt=None, chat=None, tts=None, cfg=cfg)  # type: ignore[arg-type]
    init = InitMessage(agentId="a", userId="u")
    return Session(ws, "unit", init, Agent(id="a"), services)  # type: ignore[arg-type]


async def test_a_client_that_stops_reading_is_closed(monkeypatch):
    monkeypatch.setattr(session_mod, "SEND_TIMEOUT", 0.2)
    ws = StuckSocket()
    s = make_session(ws)
    await s.start()
    await asyncio.wait_for(s.send('{"type":"x"}'), 2)  # gives up instead of waiting forever
    await asyncio.sleep(0.1)
    assert ws.closed_with == 1008 and s._closed
    await s.send('{"type":"y"}')  # later sends are dropped at once


class GoneSocket(StuckSocket):
    """A WebSocket whose client has left: every send raises, as starlette's does."""

    async def send_text(self, _: str) -> None:
        raise WebSocketDisconnect(1001)

    async def send_bytes(self, _: bytes) -> None:
        raise RuntimeError('Cannot call "send" once a close message has been sent.')


async def test_a_send_to_a_client_that_left_ends_quietly():
    s = make_session(GoneSocket())
    await s.start()
    await s.send('{"type":"x"}')  # a turn still speaking must not crash on its next chunk
    assert s._closed
    await s.send(b"\x00\x00")  # later sends are dropped at once
    await s.close()


def test_admission_counts_per_key_and_releases():
    a = Admission(max_sessions=2, max_per_key=1)
    s1, s2, s3 = object(), object(), object()
    a.admit(s1, "k1")  # type: ignore[arg-type]
    with pytest.raises(Full) as e:
        a.admit(s2, "k1")  # type: ignore[arg-type]
    assert e.value.reason == "key_full"
    a.admit(s2, "k2")  # type: ignore[arg-type]
    with pytest.raises(Full) as e:
        a.admit(s3, "k3")  # type: ignore[arg-type]
    assert e.value.reason == "server_full"
    a.release(s1)  # type: ignore[arg-type]
    a.admit(s3, "k1")  # type: ignore[arg-type]
    a.draining = True
    with pytest.raises(Full) as e:
        a.admit(object(), "k9")  # type: ignore[arg-type]
    assert e.value.reason == "draining"


async def test_queue_admits_first_come_first_served_and_tells_each_place():
    a = Admission(max_sessions=1, max_per_key=0, max_queued=2, queue_timeout=5)  # no keys: all "anonymous"
    s1, s2, s3, s4 = (object() for _ in range(4))
    told: dict[str, list[tuple[int, float]]] = {"s2": [], "s3": []}

    def tell(name: str):
        async def f(place: int, wait: float) -> None:
            told[name].append((place, wait))
        return f

    assert a.admit(s1, "k")  # type: ignore[arg-type]
    assert not a.admit(s2, "k") and not a.admit(s3, "k")  # type: ignore[arg-type]
    w2 = asyncio.create_task(a.wait(s2, "k", tell("s2")))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    w3 = asyncio.create_task(a.wait(s3, "k", tell("s3")))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    with pytest.raises(Full) as e:
        a.admit(s4, "k")  # type: ignore[arg-type]
    assert e.value.reason == "server_full"  # the queue is full too
    assert told == {"s2": [(1, 60.0)], "s3": [(2, 120.0)]}  # no session has ended yet: 60 s each
    a.release(s1)  # type: ignore[arg-type]
    await asyncio.wait_for(w2, 1)
    await asyncio.sleep(0.01)
    assert s2 in a.sessions and s3 not in a.sessions and told["s3"][-1][0] == 1
    assert told["s3"][-1][1] < 1.0  # the estimate follows how long sessions last (s1: a few ms)
    a.draining = True
    a.release(s2)  # type: ignore[arg-type]
    with pytest.raises(Full) as e:
        await asyncio.wait_for(w3, 1)
    assert e.value.reason == "draining" and not a.sessions and not a._queue


async def test_a_queued_session_gives_up_after_the_timeout():
    a = Admission(max_sessions=1, max_per_key=5, max_queued=1, queue_timeout=0.2)
    a.admit(object(), "k")  # type: ignore[arg-type]

    async def quiet(place: int, wait: float) -> None:
        pass

    with pytest.raises(Full) as e:
        await asyncio.wait_for(a.wait(object(), "k", quiet), 2)  # type: ignore[arg-type]
    assert e.value.reason == "server_full" and "within" in str(e.value) and not a._queue
