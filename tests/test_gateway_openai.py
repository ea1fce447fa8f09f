"""The gateway's OpenAI-compatible routes, through the official openai client, against the
real services (started by the `system` fixture): transcriptions in every format and
streamed, speech in every format decoded back and transcribed, streamed speech, chat with
audio out and with input_audio in, and OpenAI's error shape."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from openai import OpenAI

from shared.audio import decode_audio, wav_bytes
from shared.wer import wer
from tests.conftest import Clip, System

SENTENCE = "The quick brown fox jumps over the lazy dog."
LONG = ("Printing, in the only sense with which we are at present concerned, differs from most of the arts. "
        "The invention of movable types changed the world. Books became cheap, and reading spread to every town. "
        "Scholars could compare the same text in many cities, and errors were corrected in later editions.")


@pytest.fixture(scope="module")
def client(system: System) -> OpenAI:
    return OpenAI(base_url=system.server + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def clip(corpus: list[Clip]) -> Clip:
    return next(c for c in corpus if c.id == "lj-LJ001-0009")


def stt(system: System, audio16k: np.ndarray) -> str:
    """What the STT service hears in 16 kHz float audio (the reference transcriber)."""
    r = httpx.post(system.stt + "/transcribe", files={"file": ("a.wav", wav_bytes(audio16k, 16000), "audio/wav")}, timeout=60)
    r.raise_for_status()
    return str(r.json()["text"])


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
def test_transcription_formats(client: OpenAI, clip: Clip, fmt: str) -> None:
    with open(clip.path, "rb") as f:
        out = client.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt, language="en")  # type: ignore[call-overload]
    if fmt == "json":
        text = out.text
    elif fmt == "verbose_json":
        text = out.text
        assert out.language == "english" and out.duration == pytest.approx(7.55, abs=0.3)
        assert out.segments and out.segments[0].start == 0.0 and out.segments[-1].end > 5
        assert " ".join(s.text for s in out.segments).strip()
    elif fmt == "text":
        assert isinstance(out, str)
        text = out
    else:
        assert isinstance(out, str)
        lines = out.strip().splitlines()
        if fmt == "srt":
            assert lines[0] == "1" and " --> " in lines[1] and "," in lines[1]
            text = " ".join(lines[2:])
        else:
            assert lines[0] == "WEBVTT" and " --> " in lines[2] and "." in lines[2]
            text = " ".join(lines[3:])
    err = wer([clip.transcript], [text])
    print(f"transcription {fmt}: WER {err:.2f}")
    assert err < 0.2, text


def test_transcription_stream(client: OpenAI, clip: Clip) -> None:
    with open(clip.path, "rb") as f:
        events = list(client.audio.transcriptions.create(model="gpt-4o-mini-transcribe", file=f, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert deltas and len(done) == 1 and events[-1].type == "transcript.text.done"
    assert "".join(deltas).strip() == done[0].text.strip()
    assert wer([clip.transcript], [done[0].text]) < 0.2


def _decoded(data: bytes, fmt: str) -> np.ndarray:
    if fmt == "pcm":
        return decode_audio(wav_bytes(np.frombuffer(data, "<i2").astype(np.float32) / 32768, 24000), 16000)
    return decode_audio(data, 16000)


@pytest.mark.parametrize("fmt", ["wav", "pcm", "mp3", "opus", "flac", "aac"])
def test_speech_formats_round_trip(client: OpenAI, system: System, fmt: str) -> None:
    t0 = time.perf_counter()
    r = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format=fmt)  # type: ignore[arg-type]
    took = time.perf_counter() - t0
    audio = _decoded(r.content, fmt)
    assert 1.5 < len(audio) / 16000 < 6
    heard = stt(system, audio)
    err = wer([SENTENCE], [heard])
    print(f"speech {fmt}: {len(r.content)} bytes, {took * 1000:.0f} ms, WER {err:.2f}: {heard!r}")
    assert err <= 0.2, heard


def test_speech_streams_before_synthesis_ends(client: OpenAI, system: System) -> None:
    t0 = time.perf_counter()
    first, n = None, 0
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="verse", input=LONG, response_format="pcm") as r:
        assert r.headers["content-type"].startswith("audio/pcm")
        for chunk in r.iter_bytes(4800):
            if first is None and chunk:
                first = time.perf_counter() - t0
            n += len(chunk)
    total = time.perf_counter() - t0
    print(f"streamed speech: first bytes {first * 1000:.0f} ms, all {total * 1000:.0f} ms, {n / 48000:.1f} s of audio")
    assert first is not None and first < total / 2
    assert n / 48000 > 8  # the whole text was spoken


def test_speech_sse_and_speed(client: OpenAI, system: System) -> None:
    events = []
    with httpx.stream("POST", system.server + "/v1/audio/speech", timeout=60,
                      json={"model": "gpt-4o-mini-tts", "input": SENTENCE, "voice": "alloy", "response_format": "pcm",
                            "stream_format": "sse", "speed": 1.5, "unknown_field": 1}) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    import json

    parsed = [json.loads(e[5:]) for e in events]
    assert parsed[-1]["type"] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(p["audio"]) for p in parsed if p["type"] == "speech.audio.delta")
    normal = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format="pcm").content
    assert 0.55 < len(pcm) / len(normal) < 0.8  # 1.5x faster
    assert wer([SENTENCE], [stt(system, _decoded(pcm, "pcm"))]) <= 0.25


def test_chat_audio_out_matches_transcript(client: OpenAI, system: System) -> None:
    r = client.chat.completions.create(
        model="gpt-4o-audio-preview", modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "Tell me one short fact about the sea."}], max_tokens=30, temperature=0)
    audio = r.choices[0].message.audio
    assert audio is not None and audio.id and audio.expires_at > time.time() and audio.transcript.strip()
    data = base64.b64decode(audio.data)
    x, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 24000 and len(x) > 0.3 * rate
    heard = stt(system, decode_audio(data, 16000))
    assert wer([audio.transcript], [heard]) < 0.35, (audio.transcript, heard)


def test_chat_audio_stream(client: OpenAI, system: System) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-audio-preview", modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"}, stream=True,
        messages=[{"role": "user", "content": "Say something nice about music."}], max_tokens=30, temperature=0)
    transcript, pcm, first_audio_at, t0 = "", b"", None, time.perf_counter()
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        audio = getattr(delta, "audio", None) if delta else None  # ChoiceDeltaAudio
        if audio is not None:
            transcript += audio.transcript or ""
            if audio.data:
                first_audio_at = first_audio_at or time.perf_counter() - t0
                pcm += base64.b64decode(audio.data)
    total = time.perf_counter() - t0
    print(f"chat audio stream: first audio {(first_audio_at or 0) * 1000:.0f} ms, all {total * 1000:.0f} ms")
    assert transcript.strip() and len(pcm) > 24000
    assert first_audio_at is not None and first_audio_at < total
    heard = stt(system, _decoded(pcm, "pcm"))
    assert wer([transcript], [heard]) < 0.35, (transcript, heard)


def test_chat_input_audio(client: OpenAI, system: System, clip: Clip) -> None:
    data = base64.b64encode(clip.path.read_bytes()).decode()
    before = len(system.chat_tap.requests)
    r = client.chat.completions.create(model="gpt-4o-audio-preview", max_tokens=20, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Answer what you hear:"},
        {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}]}])
    assert r.choices[0].message.content is not None
    sent = system.chat_tap.requests[before:]
    user = [m["content"] for req in sent for m in req["messages"] if m["role"] == "user"][-1]
    assert user.startswith("Answer what you hear:")
    assert wer([clip.transcript], [user.split(":", 1)[1]]) < 0.2, user


def test_text_only_chat_passes_through(client: OpenAI) -> None:
    r = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi!"}], max_tokens=10)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi!"}], max_tokens=10, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason == "stop"


def test_models_and_errors(client: OpenAI, system: System) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"whisper-1", "tts-1", "gpt-4o-audio-preview"} <= ids
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="tts-1", voice="nobody", input="hi")
    assert e.value.body["param"] == "voice" and e.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi", response_format="ogg")  # type: ignore[arg-type]
    assert e.value.body["param"] == "response_format"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"not audio at all", "audio/wav"))
    assert e.value.body["code"] == "invalid_audio"  # type: ignore[index]
    r = httpx.post(system.server + "/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    big = httpx.post(system.server + "/v1/audio/transcriptions", files={"file": ("big.wav", b"\0" * 25_500_000, "audio/wav")})
    assert big.status_code == 413 and big.json()["error"]["code"] == "file_too_large"
    bad = httpx.post(system.server + "/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "!!!", "format": "wav"}}]}]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_base64"
