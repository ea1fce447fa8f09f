"""Resume after a dropped connection, without models: the replay log, the outbox holding
output while the socket is down, and the tokens (one use, bound, expiring)."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.websockets import WebSocketDisconnect

from services.server.session.channel import Audio, Outbox, WebSocketChannel
from services.server.session.resume import Parking, ReplayLog, ResumeRefused
from shared.protocol import ResponseText
from testing.fakes import eventually


class FakeSocket:
    """A server-side WebSocket whose network fails after `fail_after` frames."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.frames: list[str | bytes] = []
        self.fail_after = fail_after

    async def _put(self, frame: str | bytes) -> None:
        if self.fail_after is not None and len(self.frames) >= self.fail_after:
            raise WebSocketDisconnect(1006)
        self.frames.append(frame)

    async def send_text(self, text: str) -> None:
        await self._put(text)

    async def send_bytes(self, data: bytes) -> None:
        await self._put(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


def seqs(frames: list[str | bytes]) -> list[int]:
    return [m["data"]["seq"] for m in map(json.loads, frames) if m["type"] == "tts_stream"]


def test_the_replay_log_keeps_the_newest_frames_within_its_budget():
    log = ReplayLog(budget=10)
    for f in ["aaaa", "bbbb", "cccc", "dddd"]:
        log.add(f)
    assert log.count == 4
    assert log.since(4) == ([], 0)
    assert log.since(2) == (["cccc", "dddd"], 0)
    assert log.since(0) == (["cccc", "dddd"], 2)  # the first two were let go: the client is told
    assert log.since(9) == ([], 0)  # a client cannot claim more than was sent


async def test_output_waits_through_a_drop_and_the_client_gets_exactly_what_it_missed():
    first = FakeSocket(fail_after=3)
    channel = WebSocketChannel(first, replay=ReplayLog())  # type: ignore[arg-type]
    gone: list[bool] = []
    outbox = Outbox(channel, lambda: gone.append(True), hold_on_drop=True)
    outbox.start()
    for _ in range(6):
        outbox.put_audio(Audio(1, b"\0" * 64, lambda: True, lambda pcm: None))
    outbox.put(ResponseText(turn_id=1, text="hello"))
    for _ in range(100):
        if gone:
            break
        await asyncio.sleep(0.01)
    assert gone and seqs(first.frames) == [1, 2, 3]
    assert len(outbox._queue) == 4  # the chunk whose send failed is kept, with everything after it

    # the client got only the first 2 of the 3 frames the server sent before the drop
    second = FakeSocket()
    missing = await channel.rebind(second, ResponseText(turn_id=0, text="ready"), received=2)  # type: ignore[arg-type]
    outbox.go_online()
    for _ in range(100):
        if not outbox._queue:
            break
        await asyncio.sleep(0.01)
    assert missing == 0
    assert json.loads(second.frames[0])["text"] == "ready"  # the greeting first, outside the numbering
    assert seqs(second.frames) == [3, 4, 5, 6]  # nothing repeated, nothing lost
    assert json.loads(second.frames[-1])["type"] == "response_text"
    assert channel.replay is not None and channel.replay.count == 7
    await outbox.close()


async def test_without_resume_a_drop_ends_the_output():
    channel = WebSocketChannel(FakeSocket(fail_after=0))  # type: ignore[arg-type]
    outbox = Outbox(channel, lambda: None)
    outbox.start()
    outbox.put(ResponseText(turn_id=1, text="x"))
    assert await eventually(lambda: outbox.closed)
    assert not outbox._queue


class StubSession:
    def __init__(self, sid: str) -> None:
        self.id, self.closed = sid, False


async def test_a_token_resumes_once_and_only_its_own_session_for_its_own_credentials():
    parking = Parking(30.0, on_expire=lambda s: asyncio.sleep(0))
    s = StubSession("abc")
    token = parking.issue(s, "key-1")  # type: ignore[arg-type]
    parking.park(token)
    with pytest.raises(ResumeRefused, match="another session"):
        parking.claim(token, "other", "key-1")
    with pytest.raises(ResumeRefused, match="other credentials"):
        parking.claim(token, "abc", "key-2")
    assert parking.claim(token, "abc", "key-1") is s
    with pytest.raises(ResumeRefused, match="unknown"):
        parking.claim(token, "abc", "key-1")  # used once


async def test_after_the_window_the_session_ends_and_its_token_is_refused_with_a_reason():
    ended: list[object] = []

    async def on_expire(session: object) -> None:
        ended.append(session)

    parking = Parking(0.1, on_expire)  # type: ignore[arg-type]
    s = StubSession("abc")
    token = parking.issue(s, "anonymous")  # type: ignore[arg-type]
    parking.park(token)
    assert parking.parked() == [s]
    assert await eventually(lambda: bool(ended))
    assert ended == [s] and parking.parked() == []
    with pytest.raises(ResumeRefused, match="resume window"):
        parking.claim(token, "abc", "anonymous")
