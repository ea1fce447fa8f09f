"""A session survives its socket being cut, end to end on the real models: mid-reply the
client gets the rest of the answer (every audio chunk once, in order); mid-utterance the
server hears the whole sentence as one turn."""

from __future__ import annotations

import asyncio
import json
import uuid

import numpy as np
import pytest
import websockets

from shared.wer import wer
from testing.resuming_client import ResumingClient
from testing.session_client import FRAME, last_voiced_sample
from tests.conftest import SPOKEN

pytestmark = pytest.mark.e2e

INIT = {"agentId": "assistant", "userId": "resume-test", "agentName": "Test"}


async def speak(client: ResumingClient, pcm: np.ndarray, drop_at: float | None = None) -> None:
    """Send pcm in real time (20 ms frames); `drop_at` (s into it): the network cuts the socket."""
    audio = pcm.astype(np.int16).tobytes()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for k, i in enumerate(range(0, len(audio), FRAME * 2)):
        await asyncio.sleep(max(0.0, t0 + k * 0.02 - loop.time()))
        if drop_at is not None and k * 0.02 >= drop_at:
            client.drop()
            drop_at = None
        await client.send_audio(audio[i : i + FRAME * 2])


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(16000 * seconds), np.int16)


def longest(corpus):
    return max(corpus, key=lambda c: len(c.audio))


async def test_cut_mid_reply_the_answer_goes_on_with_nothing_repeated_or_lost(system, corpus):
    clip = longest(corpus)
    client = ResumingClient(system.ws + uuid.uuid4().hex, INIT)
    await client.start()
    sending = asyncio.create_task(speak(client, np.concatenate([silence(0.5), clip.audio, silence(6.0)])))
    first = await client.wait_for("tts_stream", timeout=40)
    turn = first["data"]["turn_id"]
    client.drop()  # the first chunk of the answer is in; the rest is on its way
    end = await client.wait_for("tts_stream_end", timeout=40, turn_id=turn)
    await sending
    (ready, resumed) = client.of("call_ready")
    assert client.connections == 2 and resumed["resumed"] and resumed["resume_token"] != ready["resume_token"]
    got = [seq for seq, _ in client.audio[turn]]
    assert got == list(range(1, len(got) + 1)), got  # every chunk once, in order, across both sockets
    assert sum(len(c) for _, c in client.audio[turn]) / 24000 >= SPOKEN  # a sampled reply may be one short word
    assert len(client.of("transcript")) == 1 and client.of("response_text")
    assert end["turn_id"] == turn
    # the same conversation goes on: the next turn is numbered after this one
    await speak(client, np.concatenate([clip.audio, silence(4.0)]))
    nxt = await client.wait_for("transcript", count=2, timeout=40)
    assert nxt["turn_id"] > turn
    await client.close()


async def test_cut_mid_utterance_the_sentence_is_heard_whole(system, corpus):
    clip = longest(corpus)
    voiced = last_voiced_sample(clip.audio)
    client = ResumingClient(system.ws + uuid.uuid4().hex, INIT)
    await client.start()
    # cut in the middle of the sentence; the client holds what it hears while away and sends it on return
    await speak(client, np.concatenate([silence(0.5), clip.audio, silence(5.0)]), drop_at=0.5 + voiced / 16000 / 2)
    transcript = await client.wait_for("transcript", timeout=40)
    await client.wait_for("tts_stream_end", timeout=40)
    assert client.connections == 2
    (only,) = client.of("transcript")  # one turn for the one sentence
    score = wer([clip.transcript], [only["text"]])
    print(f"\n{clip.id}: {transcript['text']!r} WER {score:.2f}")
    assert score <= 0.3
    await client.close()


async def test_a_bad_or_used_token_is_refused_with_a_reason(system):
    sid = uuid.uuid4().hex
    client = ResumingClient(system.ws + sid, INIT)
    await client.start()
    token = client.token
    assert token
    async with websockets.connect(system.ws + sid) as ws:  # the session is still connected: this one takes over
        await ws.send(json.dumps({**INIT, "resume": {"token": token, "received": 0}}))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "call_ready" and ready["resumed"]
    await asyncio.wait_for(client.ended.wait(), 10)  # the first socket was closed by the server (taken over)
    for body in ({"token": token, "received": 0}, {"token": "not-a-token-at-all", "received": 0}):
        async with websockets.connect(system.ws + sid) as ws:
            await ws.send(json.dumps({**INIT, "resume": body}))
            err = json.loads(await ws.recv())
            assert err["type"] == "error" and err["code"] == "resume_refused" and not err["recoverable"]
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
