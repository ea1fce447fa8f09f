"""A phone call end to end: testing/twilio_client.py replays Twilio's Media Streams protocol
(μ-law, 8 kHz, 20 ms frames, marks echoed once played) with corpus speech to the real
/telephony/twilio endpoint, in front of the real models."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from shared.wer import wer
from testing.twilio_client import call
from tests.conftest import SPOKEN
from tests.test_services import transcribe

pytestmark = pytest.mark.e2e


def phone_url(system) -> str:  # type: ignore[no-untyped-def]
    return system.ws.replace("/ws/", "/telephony/twilio")


def wav_bytes(pcm: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def test_a_call_is_transcribed_and_answered_in_mulaw(system, corpus):
    clips = sorted(corpus, key=lambda c: len(c.audio))[-6:-4]  # two of the longer ones, two speakers' worth
    result = await call(phone_url(system), [c.path for c in clips], reply_timeout_s=20)
    assert result.violations == [] and result.odd_frames == 0  # every message one Twilio accepts, 160-byte frames
    assert result.close_code == 1000 and result.clears == []
    assert len(result.latencies()) == 2, "each utterance got reply audio"
    asked = [r["messages"][-1]["content"] for r in system.chat_tap.requests]
    for k, (clip, turn) in enumerate(zip(clips, result.turns, strict=True)):
        # what the session heard over 8 kHz μ-law; the caller's words after a reply shorter than
        # ~1 s may be heard as going on with the sentence before (one merged turn, by design)
        said = [clip.transcript] + ([clips[0].transcript + " " + clip.transcript] if k else [])
        heard = next((text for text in reversed(asked) if any(wer([s], [text]) <= 0.35 for s in said)), None)
        assert heard, f"no chat request carries {clip.transcript!r}"
        assert len(turn.reply) / 16000 >= SPOKEN
        reply = transcribe(system.stt, wav_bytes(turn.reply)).json()["text"]  # our μ-law reply is speech
        assert len(reply.split()) >= 1, f"reply audio of {len(turn.reply) / 16000:.1f} s has no words"
        print(f"\n{clip.id}: heard {heard!r}; reply {reply!r}; first media {turn.latency:.2f} s after speech")
    assert set(result.echoed) == set(result.marks) and result.marks  # every mark came back: the acks


async def test_talking_over_the_reply_sends_clear(system, corpus):
    first, second = sorted(corpus, key=lambda c: len(c.audio))[-8], sorted(corpus, key=lambda c: len(c.audio))[-3]
    for _ in range(3):
        # the second utterance starts 1.2 s after the first one ends: ~0.5 s into the reply
        result = await call(phone_url(system), [first.path, second.path], pause_s=1.2, settle_s=1.0)
        if result.clears:
            break
        # the sampled reply ("Okay.") ended before the caller spoke over it: nothing to cut, call again
    assert result.clears, "barge-in over the reply sent no clear"
    assert result.violations == []
    first_media = result.turns[0].first_media
    assert first_media is not None and result.clears[0] > first_media
    print(f"\nclear {result.clears[0] - first_media:.2f} s after the reply began; {result.cleared_s:.2f} s of it dropped")


async def test_an_answering_machine_gets_the_agents_message_then_the_call_ends(system, tmp_path):
    greeting = "Hi, you've reached Sam. I can't come to the phone right now, please leave a message after the tone."
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.get(f"{system.tts}/tts", params={"text": greeting})
    assert r.status_code == 200
    x, rate = sf.read(io.BytesIO(r.content), dtype="float32")
    t = np.arange(int(0.4 * rate)) / rate
    beep = 0.3 * np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    wav = tmp_path / "voicemail.wav"
    sf.write(wav, np.concatenate([x, np.zeros(int(0.3 * rate), np.float32), beep]), rate, subtype="PCM_16")
    # the "reminder" agent (agents.json) leaves a message on machines; the line stays open long
    # after the reply, so it is the server that ends the call
    result = await call(phone_url(system), [wav], custom_parameters={"agentId": "reminder"}, reply_timeout_s=30, settle_s=8)
    assert result.close_code == 1000 and "answering machine" in result.close_reason, result.close_reason
    (turn,) = result.turns
    heard = transcribe(system.stt, wav_bytes(turn.reply)).json()["text"].lower()
    print(f"\nafter the greeting the tape has {len(turn.reply) / 16000:.1f} s: {heard!r}")
    assert "appointment" in heard or "reminder" in heard
    assert result.violations == []
