"""Audio Pollinations on the gateway: GET /audio and POST /audio with the request bodies of
the Pollinations documentation, in all four modalities, against the real services."""

from __future__ import annotations

import base64

import httpx
import pytest

from shared.audio import decode_audio, wav_bytes
from shared.wer import wer
from tests.conftest import Clip, System


@pytest.fixture(scope="module")
def clip(corpus: list[Clip]) -> Clip:
    return next(c for c in corpus if c.id == "cathy-b0100")


def stt(system: System, wav: bytes) -> str:
    r = httpx.post(system.stt + "/transcribe", files={"file": ("a.wav", wav_bytes(decode_audio(wav, 16000), 16000), "audio/wav")}, timeout=60)
    return str(r.json()["text"])


def test_get_speaks_text(system: System) -> None:
    text = "good morning fellow humans, what a wonderful day to be alive!"
    r = httpx.get(system.server + "/audio", params={"text": text, "voice": "ash"}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav" and r.content[:4] == b"RIFF"
    assert r.headers["x-modality"] == "tts"
    assert wer([text], [stt(system, r.content)]) <= 0.25


def test_get_text_reply(system: System) -> None:
    r = httpx.get(system.server + "/audio", params={"text": "Name a colour.", "system": "Answer in one word.", "modality": "ttt"}, timeout=60)
    assert r.status_code == 200 and r.json()["text"].strip() and "request_id" in r.json()


def test_post_messages_tts(system: System) -> None:
    body = {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Speak warmly."}]},
        {"role": "user", "content": [{"type": "text", "text": "Say hello in my voice"}, {"type": "voice", "voice": {"name": "alloy"}}]}]}
    r = httpx.post(system.server + "/audio", json=body, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert wer(["Say hello in my voice"], [stt(system, r.content)]) <= 0.4


def test_post_speech_audio_sts_and_stt(system: System, clip: Clip) -> None:
    speech = base64.b64encode(clip.path.read_bytes()).decode()
    sts = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Reply to what I say."}, {"type": "speech_audio", "audio": {"data": speech}}]}]}
    r = httpx.post(system.server + "/audio", json=sts, timeout=120)
    assert r.status_code == 200 and r.headers["x-modality"] == "sts" and r.content[:4] == b"RIFF"
    stt_body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Transcribe this audio."}, {"type": "speech_audio", "audio": {"data": speech}}]}]}
    r = httpx.post(system.server + "/audio", json=stt_body, timeout=60)
    out = r.json()
    assert r.status_code == 200 and out["object"] == "chat.completion" and out["modality"] == "stt"
    assert wer([clip.transcript], [out["choices"][0]["message"]["content"]]) < 0.2
    # explicit modality wins over the inference; json answers carry the audio
    r = httpx.post(system.server + "/audio", json={**sts, "modality": "sts", "response_format": "json"}, timeout=120)
    msg = r.json()["choices"][0]["message"]
    assert r.json()["modality"] == "sts" and base64.b64decode(msg["audio"]["data"])[:4] == b"RIFF" and msg["content"]
    assert wer([clip.transcript], [r.json()["input_transcript"]]) < 0.2


def test_clone_example_needs_consent(system: System, clip: Clip) -> None:
    # the documented voice-cloning body, as written (name "alloy" + data)
    ref = base64.b64encode(clip.path.read_bytes()).decode()
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Say hello in my voice"},
        {"type": "voice", "voice": {"name": "alloy", "data": ref, "format": "wav"}},
        {"type": "clone_audio_transcript", "audio_text": clip.transcript}]}]}
    r = httpx.post(system.server + "/audio", json=body, timeout=60)
    assert r.status_code == 400 and "consent" in r.json()["error"]["message"] and r.json()["error"]["code"] == 400
    r = httpx.post(system.server + "/audio", json={**body, "consent": True}, timeout=60)
    # Piper cannot clone: a clear 501, not a 500 (an engine that clones answers a WAV)
    assert (r.status_code == 501 and "cloning" in r.json()["error"]["message"]) or r.headers["content-type"] == "audio/wav"


def test_errors(system: System) -> None:
    r = httpx.get(system.server + "/audio", timeout=10)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "code"}
    r = httpx.post(system.server + "/audio", json={"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "modality": "stt"})
    assert r.status_code == 400 and "speech audio" in r.json()["error"]["message"]
    r = httpx.post(system.server + "/audio", json={"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x"}, {"type": "speech_audio", "audio": {"data": "%%%"}}]}]})
    assert r.status_code == 400
