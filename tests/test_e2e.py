"""End to end through ws://.../ws/{id}: real speech streamed in real time, real models."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets

from shared.wer import wer
from testing.session_client import stream_pcm
from tests.conftest import SPOKEN

pytestmark = pytest.mark.e2e


def pick(corpus, n: int):
    """A few clips of different speakers and lengths, without naming ids."""
    by_len = sorted(corpus, key=lambda c: len(c.audio))
    return [by_len[int(i * (len(by_len) - 1) / max(n - 1, 1))] for i in range(n)]


@pytest.mark.parametrize("index", [0, 1, 2])
async def test_clip_gets_a_spoken_answer(system, corpus, index):
    clip = pick(corpus, 3)[index]
    res = await stream_pcm(system.ws, clip.audio)
    kinds = [e.type for e in res.events]
    assert kinds[0] == "call_ready" and "speech_start" in kinds
    (transcript,) = res.transcripts  # exactly one turn for one utterance
    score = wer([clip.transcript], [transcript])
    print(f"\n{clip.id}: {transcript!r} WER {score:.2f}, latency {res.latency}, audio {res.audio_seconds():.2f}s")
    assert score <= 0.3
    assert res.audio_seconds() >= SPOKEN
    assert res.of("response_text") and "tts_stream_end" in kinds
    assert kinds.index("tts_stream_end") > max(i for i, k in enumerate(kinds) if k == "tts_stream")
    chunk = res.of("tts_stream")[0]["data"]
    assert chunk["sample_rate"] == 24000 and chunk["format"] == "pcm_f32le"
    partials = [e for e in res.events if e.type == "transcript_partial"]
    if len(clip.audio) > 2 * 16000:  # live captions while the user speaks
        assert partials and partials[0].t < res.speech_end
    stable = ""
    for p in partials:  # the stable part only grows, and each caption starts with it
        assert p.msg["text"].startswith(p.msg["stable"]) and p.msg["stable"].startswith(stable)
        stable = p.msg["stable"]
    (metrics,) = res.of("metrics")
    assert {"stt", "first_token", "first_audio_sent"} <= set(metrics["stages"])
    assert res.early_audio == 0  # never speaks before the user finished


async def test_binary_audio_out_and_odd_frames(system, corpus):
    clip = pick(corpus, 3)[1]
    init = {"agentId": "assistant", "userId": "t", "agentName": "T", "audioOut": "binary"}
    res = await stream_pcm(system.ws, clip.audio, init=init, frame_sizes=[641, 37, 1279, 3, 333])
    assert wer([clip.transcript], [" ".join(res.transcripts)]) <= 0.3
    assert res.audio_seconds() >= SPOKEN and not res.of("tts_stream")


async def test_typed_transcript_skips_stt(system):
    init = {"agentId": "assistant", "userId": "t", "agentName": "T"}
    extra = [(0.2, json.dumps({"type": "transcript", "text": "Hello, who are you?"}))]
    res = await stream_pcm(system.ws, np.zeros(1600, np.int16), lead=0.1, tail=4.0, init=init, extra=extra)
    assert res.transcripts == ["Hello, who are you?"] and res.audio_seconds() >= SPOKEN


async def _first_messages(url: str, first: str | bytes) -> tuple[list[dict], int | None]:
    msgs = []
    async with websockets.connect(url + "bad-input") as ws:
        await ws.send(first)
        try:
            while True:
                msgs.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
        except websockets.ConnectionClosed as exc:
            return msgs, exc.rcvd.code if exc.rcvd else None


@pytest.mark.parametrize(
    ("first", "code"),
    [("this is not json", 1007), (json.dumps({"agentId": ""}), 1008), (json.dumps([1, 2]), 1008), (b"\x00\x01" * 100, 1003)],
)
async def test_malformed_first_message_gets_error_and_policy_close(system, first, code):
    msgs, got = await _first_messages(system.ws, first)
    assert got == code
    assert msgs and msgs[0]["type"] == "error" and msgs[0]["recoverable"] is False and msgs[0]["message"]


async def test_bad_message_mid_session_is_reported_not_fatal(system, corpus):
    extra = [(0.1, "{not json"), (0.2, json.dumps({"type": "nope"}))]
    res = await stream_pcm(system.ws, pick(corpus, 3)[0].audio, extra=extra)
    assert len(res.of("error")) == 2 and all(e["recoverable"] for e in res.of("error"))
    assert res.transcripts and res.audio_seconds() >= SPOKEN
