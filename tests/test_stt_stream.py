"""The STT service alone: WS /transcribe/stream with real corpus speech, and the POST
/transcribe options (prompt, temperature, segments, language validation).

No timing assertions here (speed is measured by bench/stt_stream.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets

from shared.protocol import SttFinal, SttPartial
from shared.stt_stream_client import SttStreamClient
from shared.wer import wer
from tests.conftest import BASE_PORT, OUTPUT, ROOT, Clip, stop_system, wait_ready

pytestmark = pytest.mark.e2e

MAX_STT_WER = 0.15  # as tests/test_services.py: tiny.en scores ~5-7% here, a real regression > 0.5
PORT = BASE_PORT + 41  # its own port: the shared `system` fixture holds BASE_PORT..+3


@pytest.fixture(scope="module")
def stt() -> Iterator[str]:
    env = {**os.environ, "STT_PORT": str(PORT), "API_KEYS": ""}
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with open(OUTPUT / "stt_stream.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "services.stt.app:app", "--host", "127.0.0.1", "--port", str(PORT)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{PORT}"
    try:
        wait_ready(url, 120, proc)
        yield url
    finally:
        stop_system(proc)


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/transcribe/stream"


async def stream(ws: websockets.ClientConnection, pcm: np.ndarray, chunk_ms: int = 100, realtime: float = 0.0) -> tuple[list[SttPartial], SttFinal]:
    """Send `pcm` in chunks (sleeping `realtime` x the chunk length between them), flush, and
    collect every partial until the final."""
    partials: list[SttPartial] = []

    async def read() -> SttFinal:
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if msg["type"] == "partial":
                partials.append(SttPartial.model_validate(msg))
            elif msg["type"] == "final":
                return SttFinal.model_validate(msg)
            else:
                raise AssertionError(f"unexpected message {msg}")

    reader = asyncio.create_task(read())
    step = 16 * chunk_ms
    for i in range(0, len(pcm), step):
        await ws.send(pcm[i : i + step].tobytes())
        await asyncio.sleep(realtime * chunk_ms / 1000)
    await ws.send(json.dumps({"type": "flush"}))
    return partials, await reader


def assert_committed_only_grows(partials: list[SttPartial], final: SttFinal) -> None:
    committed = [p.committed for p in partials]
    for a, b in zip(committed, committed[1:], strict=False):
        assert b.startswith(a), (a, b)
    for p in partials:
        assert p.text == p.committed + p.tail
        assert final.text.startswith(p.committed), (p.committed, final.text)


def joined(corpus: list[Clip], speaker: str, pause: float = 0.3) -> tuple[np.ndarray, str]:
    clips = [c for c in corpus if c.id.startswith(speaker)][:3]
    gap = np.zeros(int(pause * 16000), np.int16)
    pcm = np.concatenate([np.concatenate([c.audio, gap]) for c in clips])
    return pcm, " ".join(c.transcript for c in clips)


async def test_stream_partials_only_grow_and_finals_match_the_corpus(stt, corpus):
    refs, hyps = [], []
    async with websockets.connect(ws_url(stt)) as ws:
        for clip in corpus[:10]:  # one connection, one utterance after the other
            partials, final = await stream(ws, clip.audio, realtime=0.25)
            assert_committed_only_grows(partials, final)
            assert final.duration == pytest.approx(len(clip.audio) / 16000, abs=0.01)
            refs.append(clip.transcript)
            hyps.append(final.text)
    score = wer(refs, hyps)
    for r, h in zip(refs, hyps, strict=True):
        print(f"{wer([r], [h]):.2f} {h!r}")
    print(f"\nstreaming WER on {len(refs)} clips: {score:.3f}")
    assert score <= MAX_STT_WER


async def test_stream_in_real_time_through_the_client(stt, corpus):
    clip = max((c for c in corpus if len(c.audio) < 16000 * 6), key=lambda c: len(c.audio))
    x = clip.audio.astype(np.float32) / 32768
    async with SttStreamClient(ws_url(stt), language="en") as client:
        seen: list[SttPartial] = []

        async def collect() -> None:
            async for p in client.partials():
                seen.append(p)

        reader = asyncio.create_task(collect())
        for i in range(0, len(x), 320):  # 20 ms frames at the speed they are spoken
            await client.send_audio(x[i : i + 320])
            await asyncio.sleep(0.02)
        final = await client.flush()
        reader.cancel()
    assert seen, "no partial transcript while the audio arrived in real time"
    assert_committed_only_grows(seen, final)
    assert any(p.committed for p in seen)
    assert wer([clip.transcript], [final.text]) <= 0.35


async def test_stream_long_utterance_then_a_new_one(stt, corpus):
    pcm, ref = joined(corpus, "cathy-a")
    assert 6 <= len(pcm) / 16000 <= 15
    short = next(c for c in corpus if c.id.startswith("arctic"))
    async with websockets.connect(ws_url(stt)) as ws:
        partials, final = await stream(ws, pcm, realtime=0.5)
        assert_committed_only_grows(partials, final)
        print(f"\nlong utterance ({len(pcm) / 16000:.1f}s): {final.text!r}")
        assert wer([ref], [final.text]) <= MAX_STT_WER
        assert final.passes >= 1
        _, second = await stream(ws, short.audio, realtime=0.25)
    assert wer([short.transcript], [second.text]) <= 0.35  # nothing of the first utterance is left


async def test_two_streams_at_once(stt, corpus):
    a, b = corpus[1], corpus[3]

    async def one(clip: Clip) -> str:
        async with websockets.connect(ws_url(stt)) as ws:
            return (await stream(ws, clip.audio, realtime=0.25))[1].text

    texts = await asyncio.gather(one(a), one(b))
    assert wer([a.transcript, b.transcript], list(texts)) <= MAX_STT_WER


async def test_stream_bad_messages_get_errors_and_the_socket_stays(stt, corpus):
    clip = corpus[0]
    async with websockets.connect(ws_url(stt)) as ws:
        for bad in ("not json", json.dumps({"type": "bogus"}), json.dumps({"no": "type"}),
                    json.dumps({"type": "config", "language": "x" * 5000}), json.dumps({"type": "config", "language": "en_US"}),
                    json.dumps({"type": "config", "prompt": "p" * 2000}), json.dumps({"type": "config", "extra": 1})):
            await ws.send(bad)
            msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert msg["type"] == "error" and msg["message"], bad
        await ws.send(json.dumps({"type": "config", "language": "en-US", "prompt": "A story."}))
        data = clip.audio.tobytes()
        await ws.send(data[:1001])  # an odd byte is carried over to the next frame
        await ws.send(data[1001:])
        await ws.send(json.dumps({"type": "flush"}))
        while (msg := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] != "final":
            assert msg["type"] == "partial"
    assert msg["duration"] == pytest.approx(len(clip.audio) / 16000, abs=0.01)
    assert wer([clip.transcript], [msg["text"]]) <= 0.35


async def test_stream_reset_drops_audio_and_the_buffer_is_bounded(stt, corpus):
    async with websockets.connect(ws_url(stt)) as ws:
        await ws.send(corpus[0].audio.tobytes())
        await ws.send(json.dumps({"type": "reset"}))
        await ws.send(json.dumps({"type": "flush"}))
        while (msg := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] != "final":
            pass
        assert msg["text"] == "" and msg["duration"] == 0
        quiet = (np.random.default_rng(0).standard_normal(16000 * 31) * 30).astype(np.int16)  # 31 s, near silence
        await ws.send(quiet.tobytes())
        errors = []
        await ws.send(json.dumps({"type": "flush"}))
        while (msg := json.loads(await asyncio.wait_for(ws.recv(), 120)))["type"] != "final":
            if msg["type"] == "error":
                errors.append(msg["message"])
    assert errors and "30 s" in errors[0]
    assert msg["duration"] == pytest.approx(30.0, abs=0.01)


def post(url: str, data: bytes, **form: str) -> httpx.Response:
    return httpx.post(f"{url}/transcribe", files={"audio_file": ("a.pcm", data, "audio/l16")}, data=form, timeout=60)


def test_transcribe_segments_prompt_and_temperature(stt, corpus):
    clip = corpus[0]
    r = post(stt, clip.audio.tobytes(), language="en-US", prompt="Hester Prynne, a story.", temperature="0.2")
    assert r.status_code == 200, r.text
    body = r.json()
    assert wer([clip.transcript], [body["text"]]) <= 0.35
    segs = body["segments"]
    assert segs and [s["id"] for s in segs] == list(range(len(segs)))
    assert all(0 <= s["start"] < s["end"] <= body["duration"] + 0.01 and s["text"] for s in segs)
    assert " ".join(s["text"] for s in segs) == body["text"]


@pytest.mark.parametrize(("field", "value", "word"), [
    ("language", "x" * 5000, "language"), ("language", "english", "language"), ("language", "en;drop", "language"),
    ("prompt", "p" * 1001, "prompt"), ("temperature", "1.5", "temperature"), ("temperature", "-0.1", "temperature"),
])
def test_transcribe_rejects_bad_options(stt, corpus, field, value, word):
    r = post(stt, corpus[0].audio.tobytes(), **{field: value})
    assert r.status_code == 400 and word in r.json()["error"], r.text


def test_a_loop_cut_short_by_the_length_cap_is_a_loop():
    from services.stt.engines.faster_whisper import _looped

    said = [1, 2, 3, 4, 5, 6, 7, 8, 9]  # "Welcome to the open audio powered at the eye."
    assert _looped(said + said)  # said twice
    assert _looped(said + said[:8])  # the cap cut the second time short
    assert not _looped(said)
    assert not _looped([1, 2, 3, 4, 5, 6, 7, 1, 2, 3])  # three words back is speech, not a loop


def test_a_repeat_that_differs_only_in_case_and_punctuation_is_a_loop(stt):
    """A Piper take of "Oh, you remember the sea?" (1.7 s) that tiny.en, in the short window,
    decoded as "Oh, you remember the C? You remember the C?": no token repeats (" you" is not
    " You"), so the repeat is found in the words and the full window decodes it once."""
    audio, rate = sf.read(ROOT / "tests" / "audio" / "piper_take_whisper_repeats.wav", dtype="int16")
    assert rate == 16000
    r = post(stt, audio.tobytes())
    assert r.status_code == 200, r.text
    words = r.json()["text"].lower().split()
    assert words.count("remember") == 1 and len(words) <= 6, r.text


async def test_the_final_says_how_sure_whisper_is_that_the_sentence_ended(stt, corpus):
    """Whisper writes a full stop after most fragments, but it is less sure of it there: the
    final (streamed or posted) carries that probability, an end-of-turn cue (bench/eot.py)."""
    whole, cut, posted = [], [], []
    async with websockets.connect(ws_url(stt)) as ws:
        for clip in corpus[:10]:
            for pcm, into in ((clip.audio, whole), (clip.audio[: len(clip.audio) * 6 // 10], cut)):
                _, final = await stream(ws, pcm)
                assert final.sentence_end is not None and 0.0 <= final.sentence_end <= 1.0, final
                into.append(final.sentence_end)
            body = post(stt, clip.audio.tobytes()).json()
            posted.append(body["sentence_end"])
    print(f"\nP(sentence end): whole clips {np.round(whole, 2)}, cut at 60% {np.round(cut, 2)}")
    assert np.mean(whole) > np.mean(cut) + 0.1
    assert all(p is not None and 0.0 <= p <= 1.0 for p in posted), posted
