"""The TTS synthesis gate: bounded to the cores, a reply's first text ahead of later texts."""

from __future__ import annotations

import asyncio

from services.tts.gate import SynthesisGate


async def test_first_texts_go_ahead_of_later_ones_and_each_class_in_order():
    gate, order = SynthesisGate(1), []
    release = asyncio.Event()

    async def speak(name: str, urgent: bool, hold: asyncio.Event | None = None) -> None:
        async with gate.slot(urgent):
            order.append(name)
            if hold is not None:
                await hold.wait()

    running = asyncio.create_task(speak("running", False, release))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(speak(n, u)) for n, u in
               (("later-a", False), ("first-a", True), ("later-b", False), ("first-b", True))]
    await asyncio.sleep(0)
    assert gate.busy == 1 and gate.waiting() == 4
    release.set()
    await asyncio.gather(running, *waiting)
    assert order == ["running", "first-a", "first-b", "later-a", "later-b"]
    assert gate.busy == 0 and gate.waiting() == 0


async def test_workers_run_together_up_to_the_bound():
    gate, peak, now = SynthesisGate(2), [0], [0]

    async def speak() -> None:
        async with gate.slot(False):
            now[0] += 1
            peak[0] = max(peak[0], now[0])
            await asyncio.sleep(0.01)
            now[0] -= 1

    await asyncio.gather(*(speak() for _ in range(6)))
    assert peak[0] == 2 and gate.busy == 0


async def test_a_cancelled_stream_gives_its_place_and_slot_on():
    gate, release, got = SynthesisGate(1), asyncio.Event(), []

    async def speak(name: str, hold: asyncio.Event | None = None) -> None:
        async with gate.slot(True):
            got.append(name)
            if hold is not None:
                await hold.wait()

    first = asyncio.create_task(speak("first", release))
    await asyncio.sleep(0)
    gone, after = asyncio.create_task(speak("gone")), asyncio.create_task(speak("after"))
    await asyncio.sleep(0)
    gone.cancel()  # a barge-in cancels a stream that was waiting for the gate
    release.set()
    await asyncio.gather(first, after)
    assert got == ["first", "after"] and gate.busy == 0

    # handed the slot just as it is cancelled: the slot passes on, it is not lost
    hold = asyncio.Event()
    holder = asyncio.create_task(speak("holder", hold))
    await asyncio.sleep(0)
    unlucky, next_one = asyncio.create_task(speak("unlucky")), asyncio.create_task(speak("next"))
    await asyncio.sleep(0)
    hold.set()
    await holder  # its release hands the slot to "unlucky", which has not run yet
    unlucky.cancel()
    await asyncio.gather(unlucky, next_one, return_exceptions=True)
    assert got[-1] == "next" and gate.busy == 0


class StuckClient:
    """A stream whose client never reads: every binary send blocks."""

    def __init__(self) -> None:
        self.closed_with: int | None = None
        self.texts: list[str] = []

    async def send_bytes(self, _: bytes) -> None:
        await asyncio.Event().wait()

    async def send_text(self, text: str) -> None:
        self.texts.append(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = code


async def test_a_client_that_stops_reading_gives_its_worker_back(monkeypatch):
    import numpy as np

    from services.tts import stream
    from shared.protocol import TtsRequest

    class Engine:
        name, local = "fake", True

        async def stream(self, text, voice, chunk_ms):  # noqa: ANN001, ANN202
            yield np.zeros(240, np.float32)

    class Ctx:
        gate = SynthesisGate(1)
        cfg = type("Cfg", (), {"chunk_ms": 80})()

        def pick(self, voice, personality, route):  # noqa: ANN001, ANN202
            return Engine(), None

    monkeypatch.setattr(stream, "SEND_TIMEOUT", 0.1)
    monkeypatch.setattr(stream, "timed_stream", lambda engine, text, voice, ms: engine.stream(text, voice, ms))
    ws, ctx = StuckClient(), Ctx()
    await asyncio.wait_for(stream._speak(ws, ctx, TtsRequest(text="Hello."), None, opening=True), 2)  # type: ignore[arg-type]
    assert ws.closed_with == 1008 and ctx.gate.busy == 0
