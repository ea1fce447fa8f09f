"""Telephony transport without models: G.711, the Media Streams messages, TwilioChannel,
serve_media_stream over fake sockets, the TwiML webhook and Twilio's signature, and the
replaying client (testing/twilio_client.py) against a real uvicorn server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import warnings
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import soundfile as sf
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from services.server.telephony import g711
from services.server.telephony.config import TwilioSettings
from services.server.telephony.routes import SIGNATURE_HEADER, make_router, signature_ok
from services.server.telephony.twilio import (
    Connected,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    TwilioChannel,
    UnknownEvent,
    parse_mark,
    parse_message,
    serve_media_stream,
)
from services.server.telephony.webhook import compute_signature, connect_stream_twiml, stream_url, valid_signature
from shared.protocol import Interrupted, PlaybackIn, SpeechStart, TtsStreamEnd
from testing.twilio_client import call, phone_frames

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "wav"


def tone(freq: float, seconds: float, rate: int, level: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])

# --------------------------------------------------------------------------- G.711


def test_g711_known_code_points() -> None:
    assert g711.encode(np.zeros(4, np.int16), "mulaw") == b"\xff" * 4  # silence
    assert g711.encode(np.zeros(4, np.int16), "alaw") == b"\xd5" * 4
    assert list(g711.decode(bytes([0x00, 0x80, 0xFF, 0x7F]), "mulaw")) == [-32124, 32124, 0, 0]
    assert list(g711.decode(bytes([0xD5, 0x55, 0xAA, 0x2A]), "alaw")) == [8, -8, 32256, -32256]
    assert g711.encode(np.array([32767, -32768], np.int16), "mulaw") == b"\x80\x00"  # full scale clips to the end codes
    assert g711.encode(np.array([32767, -32768], np.int16), "alaw") == b"\xaa\x2a"


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_g711_round_trip_error_bound(law: g711.Law) -> None:
    x = np.arange(-32768, 32768, dtype=np.int64)
    y = g711.decode(g711.encode(x.astype(np.int16), law), law).astype(np.int64)
    inside = np.abs(x) <= 32000  # beyond the last segment's end, clipping
    assert np.all(np.abs(y - x)[inside] <= np.abs(x[inside]) / 32 + 8)  # logarithmic: half a step, ~3% of the level
    codes = bytes(range(256))
    decoded = g711.decode(codes, law)
    assert np.array_equal(g711.decode(g711.encode(decoded, law), law), decoded)  # decoded values are exact code points


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_g711_matches_the_reference_implementation(law: g711.Law) -> None:
    """Bit-exact against CPython's audioop (Sun's reference g711.c) where it still exists (< 3.13)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    x = np.arange(-32768, 32768, dtype=np.int16)
    lin2, to_lin = (audioop.lin2ulaw, audioop.ulaw2lin) if law == "mulaw" else (audioop.lin2alaw, audioop.alaw2lin)
    assert g711.encode(x, law) == lin2(x.tobytes(), 2)
    assert np.array_equal(g711.decode(bytes(range(256)), law), np.frombuffer(to_lin(bytes(range(256)), 2), "<i2"))


def test_g711_speech_band_snr() -> None:
    x = (tone(440, 0.5, 8000) * 32768).astype(np.int16)
    y = g711.decode(g711.encode(x))
    noise = (y.astype(np.float64) - x) ** 2
    assert 10 * np.log10((x.astype(np.float64) ** 2).mean() / noise.mean()) > 35


def test_inbound_is_16k_pcm_and_continuous() -> None:
    frames = [g711.encode((tone(300, 1.0, 8000) * 32768).astype(np.int16))[i : i + 160] for i in range(0, 8000, 160)]
    assert len(g711.inbound(frames[10])) == 320 * 2  # one 20 ms frame alone: 320 samples of int16
    decoder = g711.Inbound()
    pcm = np.frombuffer(b"".join(decoder.push(f) for f in frames), "<i2")
    assert 15_000 < len(pcm) <= 16_000  # the stream resampler holds back a few ms
    assert abs(peak_hz(pcm, 16000) - 300) < 3
    steady = pcm[1000:].astype(np.float64)  # no clicks at frame borders: a clean tone
    assert np.abs(np.diff(steady, 2)).max() < 2 * (2 * np.pi * 300 / 16000) ** 2 * 0.3 * 32768 + 400


def test_outbound_frames_remainder_flush_and_reset() -> None:
    enc = g711.Outbound()
    x = tone(440, 1.0, 24000)
    chunks = np.array_split(x, [1000, 1001, 7777, 12000, 23999])  # odd sizes, one of a single sample
    frames = [f for c in chunks for f in enc.push(c.astype("<f4").tobytes())]
    tail = enc.flush()
    assert all(len(f) == 160 for f in frames + tail)
    assert len(frames) + len(tail) in (50, 51)  # 1 s = 50 frames of 20 ms (+ padding)
    y = g711.decode(b"".join(frames + tail))
    assert abs(peak_hz(y, 8000) - 440) < 3
    assert tail[-1].endswith(b"\xff") or len(tail[-1]) == 160  # padded with μ-law silence
    assert enc.push(x[:100].astype("<f4").tobytes()) == []  # 100 samples: under a frame, kept
    enc.reset()
    assert enc.flush() == []  # the reset dropped it


# --------------------------------------------------------------------------- the messages

CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {
    "event": "start", "sequenceNumber": "1", "streamSid": SID,
    "start": {"accountSid": "AC123", "streamSid": SID, "callSid": "CA123", "tracks": ["inbound"],
              "customParameters": {"agentId": "support"},
              "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
}


def media_msg(payload: bytes | str, n: int = 1, track: str = "inbound") -> dict[str, Any]:
    data = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
    return {"event": "media", "sequenceNumber": str(n + 1), "streamSid": SID,
            "media": {"track": track, "chunk": str(n), "timestamp": str(20 * n), "payload": data}}


def test_parse_documented_messages() -> None:
    assert isinstance(parse_message(json.dumps(CONNECTED)), Connected)
    start = parse_message(json.dumps(START))
    assert isinstance(start, Start) and start.start.callSid == "CA123" and start.start.mediaFormat.sampleRate == 8000
    assert start.start.customParameters == {"agentId": "support"}
    media = parse_message(json.dumps(media_msg(b"\xff" * 160)))
    assert isinstance(media, Media) and base64.b64decode(media.media.payload) == b"\xff" * 160
    mark = parse_message(json.dumps({"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "3:120"}}))
    assert isinstance(mark, Mark) and mark.mark.name == "3:120"
    stop = parse_message(json.dumps({"event": "stop", "sequenceNumber": "5", "streamSid": SID,
                                     "stop": {"accountSid": "AC123", "callSid": "CA123"}}))
    assert isinstance(stop, Stop) and stop.stop.callSid == "CA123"
    dtmf = parse_message(json.dumps({"event": "dtmf", "streamSid": SID, "sequenceNumber": "5",
                                     "dtmf": {"track": "inbound_track", "digit": "1"}}))
    assert isinstance(dtmf, Dtmf) and dtmf.dtmf.digit == "1"
    with pytest.raises(UnknownEvent):
        parse_message('{"event": "transcription"}')
    with pytest.raises(ValueError):
        parse_message("not json")
    with pytest.raises(ValueError):
        parse_message('{"event": "media", "media": {}}')  # no payload


def test_parse_mark() -> None:
    assert parse_mark("12:340") == (12, 340)
    for name in ("", "12", "a:1", "1:-5", "1:2:3", "greeting", "9" * 50 + ":1"):
        assert parse_mark(name) is None


# --------------------------------------------------------------------------- the channel


class FakeSocket:
    """A WebSocket as serve_media_stream sees it: text frames in, text frames out."""

    def __init__(self, incoming: list[dict[str, Any] | str] | None = None, hang: bool = False) -> None:
        self.incoming: asyncio.Queue[str | None] = asyncio.Queue()
        for m in incoming or []:
            self.push(m)
        if not hang:
            self.incoming.put_nowait(None)  # then a disconnect
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str | None] | None = None

    def push(self, msg: dict[str, Any] | str) -> None:
        self.incoming.put_nowait(msg if isinstance(msg, str) else json.dumps(msg))

    async def receive_text(self) -> str:
        text = await self.incoming.get()
        if text is None:
            raise WebSocketDisconnect(1000)
        return text

    async def send_text(self, data: str) -> None:
        self.sent.append(json.loads(data))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["event"] == kind]


def f32(x: np.ndarray) -> bytes:
    return x.astype("<f4").tobytes()


async def test_channel_audio_becomes_media_frames_and_a_mark() -> None:
    ws = FakeSocket()
    ch = TwilioChannel(ws, SID)
    await ch.send_audio(1, f32(tone(440, 0.2, 24000)))
    media = ws.events("media")
    assert len(media) >= 9 and all(len(base64.b64decode(m["media"]["payload"])) == 160 for m in media)
    assert all(m == {"event": "media", "streamSid": SID, "media": {"payload": m["media"]["payload"]}} for m in media)
    assert ws.sent[-1] == {"event": "mark", "streamSid": SID, "mark": {"name": f"1:{len(media) * 20}"}}
    await ch.send(TtsStreamEnd(turn_id=1))  # the last partial frame, padded, and its mark
    total = len(ws.events("media"))
    assert total in (10, 11) and ws.sent[-1]["mark"]["name"] == f"1:{total * 20}"
    assert [m["mark"]["name"] for m in ws.events("mark")] == [f"1:{len(media) * 20}", f"1:{total * 20}"]
    await ch.send(SpeechStart())  # no Twilio equivalent: nothing sent
    assert len(ws.sent) == total + 2
    ack = ch.playback_ack(f"1:{len(media) * 20}")
    assert ack == PlaybackIn(type="playback", turn_id=1, played_ms=len(media) * 20)
    assert ch.playback_ack("1:99999") is None  # never sent
    assert ch.playback_ack("someone else's") is None


async def test_channel_interrupted_sends_clear_and_drops_pending_acks() -> None:
    ws = FakeSocket()
    ch = TwilioChannel(ws, SID)
    await ch.send_audio(2, f32(tone(440, 0.5, 24000)))
    await ch.send_audio(2, f32(tone(440, 0.01, 24000)))  # under a frame: held by the encoder
    pending = [m["mark"]["name"] for m in ws.events("mark")]
    await ch.send(Interrupted(turn_id=2, played_ms=120.0))
    assert ws.sent[-1] == {"event": "clear", "streamSid": SID}
    assert all(ch.playback_ack(name) is None for name in pending)  # Twilio echoes them at once: not played
    await ch.send(TtsStreamEnd(turn_id=2))  # the encoder was reset: nothing left of turn 2
    assert ws.sent[-1] == {"event": "clear", "streamSid": SID}
    await ch.send_audio(3, f32(tone(300, 0.1, 24000)))  # the next turn counts from zero
    assert ws.sent[-1]["mark"]["name"].startswith("3:")
    assert ch.playback_ack(ws.sent[-1]["mark"]["name"]) is not None


async def test_channel_new_turn_flushes_the_old_one() -> None:
    ws = FakeSocket()
    ch = TwilioChannel(ws, SID)
    await ch.send_audio(1, f32(tone(440, 0.2, 24000)))  # long enough for the resampler to release frames
    await ch.send_audio(2, f32(tone(440, 0.2, 24000)))
    names = [m["mark"]["name"] for m in ws.events("mark")]
    assert any(n.startswith("1:") for n in names[1:]) and names[-1].startswith("2:")
    await ch.close(1000, "bye")
    assert ws.closed == (1000, "bye")


# --------------------------------------------------------------------------- serving a call


class FakeSession:
    def __init__(self, channel: TwilioChannel, reply_after: int = 0) -> None:
        self.channel, self.reply_after = channel, reply_after
        self.audio = b""
        self.frames = 0
        self.texts: list[object] = []
        self.closed = 0

    async def on_audio(self, data: bytes) -> None:
        self.audio += data
        self.frames += 1
        if self.frames == self.reply_after:
            await self.channel.send_audio(1, f32(tone(440, 0.1, 24000)))

    async def on_text(self, msg: object) -> None:
        self.texts.append(msg)

    async def close(self) -> None:
        self.closed += 1


async def serve(ws: FakeSocket, reply_after: int = 0, timeout: float = 1.0) -> list[FakeSession]:
    sessions: list[FakeSession] = []

    async def open_session(channel: TwilioChannel, start: Start) -> FakeSession:
        assert start.streamSid == SID and start.start.customParameters == {"agentId": "support"}
        sessions.append(FakeSession(channel, reply_after))
        return sessions[-1]

    await asyncio.wait_for(serve_media_stream(ws, open_session, handshake_timeout=timeout), 5)
    return sessions


async def test_serve_media_stream_a_documented_call() -> None:
    silence = b"\xff" * 160
    ws = FakeSocket([CONNECTED, START] + [media_msg(silence, n) for n in range(1, 6)], hang=True)
    task = asyncio.create_task(serve(ws, reply_after=5))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if ws.events("mark"):
            break
    name = ws.events("mark")[-1]["mark"]["name"]
    ws.push({"event": "mark", "sequenceNumber": "9", "streamSid": SID, "mark": {"name": name}})  # played
    ws.push({"event": "dtmf", "streamSid": SID, "sequenceNumber": "10", "dtmf": {"track": "inbound_track", "digit": "5"}})
    ws.push({"event": "some_future_event", "streamSid": SID})  # ignored
    ws.push(media_msg(silence, 6, track="outbound"))  # our own audio echoed on both_tracks: not the caller
    ws.push({"event": "stop", "sequenceNumber": "11", "streamSid": SID, "stop": {"accountSid": "AC123", "callSid": "CA123"}})
    (session,) = await task
    assert session.frames == 5
    assert 5 * 320 * 2 - 200 <= len(session.audio) <= 5 * 320 * 2  # 16 kHz int16, less the resampler's delay
    assert not np.frombuffer(session.audio, "<i2").any()  # silence in, silence out
    turn, ms = parse_mark(name) or (0, 0)
    assert session.texts == [PlaybackIn(type="playback", turn_id=turn, played_ms=ms)]
    assert session.closed == 1 and ws.closed == (1000, "stream stopped")


async def test_serve_media_stream_skips_bad_frames() -> None:
    frames = [media_msg("!!not base64!!", 1), media_msg("A" * 20_000, 2), "not json", '{"event": "media"}',
              "x" * 40_000, media_msg(b"\xff" * 160, 3)]
    (session,) = await serve(FakeSocket([CONNECTED, START, *frames]))
    assert session.frames == 1 and session.closed == 1  # only the good frame; then the disconnect closes it


@pytest.mark.parametrize("messages, reason", [
    ([CONNECTED, media_msg(b"\xff" * 160)], "expected start, got media"),
    (["{oops"], "not JSON"),
    ([{**START, "start": {**START["start"], "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000}}}],
     "unsupported media format"),
    ([{"event": "start", "streamSid": SID}], "invalid message before start"),
])
async def test_serve_media_stream_refuses_a_broken_handshake(messages: list[Any], reason: str) -> None:
    ws = FakeSocket(messages, hang=True)
    assert await serve(ws) == []
    assert ws.closed is not None and ws.closed[0] == 1008 and reason in (ws.closed[1] or "")


async def test_serve_media_stream_handshake_timeout_and_disconnect() -> None:
    ws = FakeSocket([CONNECTED], hang=True)
    assert await serve(ws, timeout=0.1) == []
    assert ws.closed is not None and ws.closed[0] == 1008 and "no start" in (ws.closed[1] or "")
    ws = FakeSocket([CONNECTED])  # gone before start
    assert await serve(ws) == [] and ws.closed is None


async def test_serve_media_stream_when_the_session_cannot_open() -> None:
    ws = FakeSocket([CONNECTED, START], hang=True)

    async def refuse(channel: TwilioChannel, start: Start) -> FakeSession:
        raise RuntimeError("full")

    await asyncio.wait_for(serve_media_stream(ws, refuse), 5)
    assert ws.closed == (1011, "could not open a session")


# --------------------------------------------------------------------------- webhook and signature

TOKEN = "12345"
URI = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309", "To": "+18005551212",
          "Caller": "+14158675309"}


def test_signature_matches_twilio_vectors() -> None:
    """The vectors of Twilio's own helper library tests (twilio-python)."""
    assert compute_signature(TOKEN, URI, PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    duplicates = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    assert compute_signature(TOKEN, URI, duplicates) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    assert valid_signature(TOKEN, URI, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert valid_signature(TOKEN, URI.replace(".com", ".com:1234"), PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")  # port removed
    assert valid_signature(TOKEN, URI, PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w=")  # signed with :443
    assert valid_signature(TOKEN, URI.replace("https", "http"), PARAMS, "0ZXoZLH/DfblKGATFgpif+LLRf4=")  # signed with :80
    assert not valid_signature(TOKEN, URI, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8")
    assert not valid_signature(TOKEN, URI, {**PARAMS, "Digits": "1235"}, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not valid_signature("54321", URI, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not valid_signature(TOKEN, URI, PARAMS, None)


def test_twiml_and_stream_url() -> None:
    xml = connect_stream_twiml("wss://voice.example.com/telephony/twilio", {"agentId": 'a"<&>b'})
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response>')
    stream = ET.fromstring(xml.split("?>", 1)[1]).find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://voice.example.com/telephony/twilio"
    param = stream.find("Parameter")
    assert param is not None and param.get("name") == "agentId" and param.get("value") == 'a"<&>b'  # escaped, intact
    assert stream_url("https://voice.example.com", "ignored") == "wss://voice.example.com/telephony/twilio"
    assert stream_url("http://127.0.0.1:8000/", None) == "ws://127.0.0.1:8000/telephony/twilio"
    assert stream_url("", "abc.ngrok.app") == "wss://abc.ngrok.app/telephony/twilio"
    for host in (None, "", "evil.com/path", 'a"b', "a b"):
        with pytest.raises(ValueError):
            stream_url("", host)


def webhook_client(token: str = "", public_url: str = "") -> TestClient:
    settings = TwilioSettings(auth_token=token, public_url=public_url)
    app = FastAPI()
    app.include_router(make_router(settings))

    @app.websocket("/telephony/twilio")
    async def stream(ws: WebSocket) -> None:  # the handshake check the app does before accepting
        if not signature_ok(ws, settings):
            await ws.close(1008, "invalid X-Twilio-Signature")
            return
        await ws.accept()
        await ws.send_text("ok")
        await ws.close()

    return TestClient(app, base_url="https://voice.example.com")


def test_webhook_answers_twiml() -> None:
    r = webhook_client().post("/telephony/twilio/voice?agent=support", data=PARAMS)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    stream = ET.fromstring(r.text.split("?>", 1)[1]).find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://voice.example.com/telephony/twilio"
    assert [(p.get("name"), p.get("value")) for p in stream] == [("agentId", "support")]
    r = webhook_client(public_url="https://public.example.org").post("/telephony/twilio/voice?agent=../../x", data=PARAMS)
    stream = ET.fromstring(r.text.split("?>", 1)[1]).find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://public.example.org/telephony/twilio" and len(stream) == 0


def test_webhook_checks_the_signature_when_configured() -> None:
    client = webhook_client(token=TOKEN)
    url = "https://voice.example.com/telephony/twilio/voice"
    good = compute_signature(TOKEN, url, PARAMS)
    assert client.post("/telephony/twilio/voice", data=PARAMS, headers={SIGNATURE_HEADER: good}).status_code == 200
    bad = client.post("/telephony/twilio/voice", data={**PARAMS, "From": "+1999"}, headers={SIGNATURE_HEADER: good})
    assert bad.status_code == 403 and "X-Twilio-Signature" in bad.json()["error"]
    assert client.post("/telephony/twilio/voice", data=PARAMS).status_code == 403  # none at all
    # behind a proxy: Twilio signed the public URL, not the one the server sees
    proxied = webhook_client(token=TOKEN, public_url="https://public.example.org")
    public = compute_signature(TOKEN, "https://public.example.org/telephony/twilio/voice", PARAMS)
    assert proxied.post("/telephony/twilio/voice", data=PARAMS, headers={SIGNATURE_HEADER: public}).status_code == 200
    assert proxied.post("/telephony/twilio/voice", data=PARAMS, headers={SIGNATURE_HEADER: good}).status_code == 403


def test_stream_handshake_signature() -> None:
    client = webhook_client(token=TOKEN)
    signed = compute_signature(TOKEN, "wss://testserver/telephony/twilio")  # the test client's WebSocket host
    with client.websocket_connect("/telephony/twilio", headers={SIGNATURE_HEADER: signed}) as ws:
        assert ws.receive_text() == "ok"
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/telephony/twilio"):
        pass
    assert refused.value.code == 1008


# --------------------------------------------------------------------------- the replaying client, end to end


class ToneSession:
    """A stand-in for the real session: replies to each utterance (energy up, then 300 ms quiet)
    with 1 s of tone, and interrupts the reply if the caller talks before the acks say it played."""

    REPLY_MS = 1000

    def __init__(self, channel: TwilioChannel) -> None:
        self.channel = channel
        self.turn, self.voiced, self.quiet = 0, 0, 0
        self.acks: list[PlaybackIn] = []
        self.playing = False  # a reply sent and not yet acked to its end
        self.closed = False

    async def on_audio(self, data: bytes) -> None:
        loud = bool(data) and np.abs(np.frombuffer(data, "<i2")).mean() > 300
        self.voiced, self.quiet = (self.voiced + 1, 0) if loud else (self.voiced, self.quiet + 1)
        if loud and self.voiced == 3 and self.playing:
            self.playing = False
            await self.channel.send(Interrupted(turn_id=self.turn, played_ms=self.played()))
        if self.voiced >= 5 and self.quiet == 15:  # end of an utterance
            self.voiced = 0
            self.turn += 1
            self.playing = True
            for chunk in np.array_split(tone(440, self.REPLY_MS / 1000, 24000), 10):
                await self.channel.send_audio(self.turn, f32(chunk))
            await self.channel.send(TtsStreamEnd(turn_id=self.turn))

    def played(self) -> float:
        return max((a.played_ms for a in self.acks if a.turn_id == self.turn), default=0.0)

    async def on_text(self, msg: object) -> None:
        assert isinstance(msg, PlaybackIn)
        self.acks.append(msg)
        if self.played() >= self.REPLY_MS:
            self.playing = False

    async def close(self) -> None:
        self.closed = True


@contextlib.asynccontextmanager
async def media_stream_server(sessions: list[ToneSession]):  # type: ignore[no-untyped-def]
    import uvicorn

    app = FastAPI()

    async def open_session(channel: TwilioChannel, start: Start) -> ToneSession:
        sessions.append(ToneSession(channel))
        return sessions[-1]

    @app.websocket("/telephony/twilio")
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        await serve_media_stream(ws, open_session)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/telephony/twilio"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 5)


def utterance_wav(path: Path, seconds: float) -> Path:
    x = np.concatenate([tone(200, seconds, 16000, 0.4), np.zeros(1600, np.float32)])  # speech, then 100 ms quiet
    sf.write(path, x, 16000, subtype="PCM_16")
    return path


async def test_client_replays_a_call_against_a_real_server(tmp_path: Path) -> None:
    sessions: list[ToneSession] = []
    wavs = [utterance_wav(tmp_path / "a.wav", 0.6), utterance_wav(tmp_path / "b.wav", 0.4)]
    async with media_stream_server(sessions) as url:
        # settle: 1 s of wall clock without media (4 s of audio at this speed) means the reply is over,
        # even on a loaded machine that stalls the sender between chunks
        result = await asyncio.wait_for(call(url, wavs, speed=4.0, lead_in_s=0.2, settle_s=1.0, reply_timeout_s=5), 20)
    assert result.violations == [] and result.odd_frames == 0 and result.clears == []
    assert len(result.latencies()) == 2 and all(0 < t < 1.0 for t in result.latencies())
    for turn in result.turns:  # each reply: 1 s of 440 Hz, decoded back to 16 kHz
        assert 0.95 < len(turn.reply) / 16000 < 1.05 and abs(peak_hz(turn.reply, 16000) - 440) < 5
    (session,) = sessions
    assert session.closed and result.echoed == result.marks  # every mark played and came back, in order
    assert [(a.turn_id, a.played_ms) for a in session.acks][-1] == (2, 1000)  # the acks say all 1 s was heard


async def test_client_barge_in_gets_a_clear(tmp_path: Path) -> None:
    sessions: list[ToneSession] = []
    wavs = [utterance_wav(tmp_path / "a.wav", 0.6), utterance_wav(tmp_path / "b.wav", 0.4)]
    async with media_stream_server(sessions) as url:  # the second utterance starts 0.3 s into the 1 s reply
        result = await asyncio.wait_for(call(url, wavs, speed=2.0, lead_in_s=0.2, pause_s=0.6, settle_s=0.2), 30)
    assert len(result.clears) >= 1 and result.cleared_s > 0.2
    assert result.violations == []
    (session,) = sessions
    cleared = set(result.marks) - {f"{a.turn_id}:{a.played_ms:g}" for a in session.acks}
    assert cleared  # the marks Twilio echoes at a clear are not taken as played


def test_phone_frames_of_corpus_speech() -> None:
    clips = sorted(CORPUS.glob("*.wav")) if CORPUS.is_dir() else []
    if not clips:
        pytest.skip("no corpus at ../shared/corpus")
    frames, voiced = phone_frames(clips[0])
    seconds = sf.info(str(clips[0])).duration
    assert all(len(f) == 160 for f in frames) and abs(len(frames) * 0.02 - seconds) < 0.03
    assert 0.5 * len(frames) < voiced <= len(frames)


def guarded_webhook(token: str = "") -> TestClient:
    """The webhook and a stream route behind the guard with API keys on, as in the server."""
    from shared.security import Guard, GuardConfig, KeyRing, SessionTokens

    settings = TwilioSettings(auth_token=token)
    app = FastAPI()
    app.include_router(make_router(settings))

    @app.websocket("/telephony/twilio")
    async def stream(ws: WebSocket) -> None:
        if not signature_ok(ws, settings):
            await ws.close(1008)
            return
        await ws.accept()
        await ws.send_text("ok")
        await ws.close()

    keys, tokens = KeyRing(["sk-test-0123456789"]), SessionTokens(b"x", 60)
    app.state.keys, app.state.tokens = keys, tokens  # as create_service does
    app.add_middleware(Guard, config=GuardConfig("server", 10**6, None, "/ws/", "/telephony/"), keys=keys, tokens=tokens)
    return TestClient(app, base_url="https://voice.example.com")


def test_with_api_keys_on_telephony_needs_twilio_signature_or_a_key() -> None:
    closed = guarded_webhook()  # keys on, no Twilio token: nobody without a key gets in
    assert closed.post("/telephony/twilio/voice", data=PARAMS).status_code == 403
    assert closed.post("/telephony/twilio/voice", data=PARAMS, headers={"X-API-Key": "sk-test-0123456789"}).status_code == 200
    assert closed.post("/telephony/twilio/voice", data=PARAMS, headers={"X-API-Key": "wrong"}).status_code == 403
    with pytest.raises(WebSocketDisconnect), closed.websocket_connect("/telephony/twilio"):
        pass
    signed = guarded_webhook(TOKEN)  # keys on and a Twilio token: Twilio's signature is the credential
    url = "https://voice.example.com/telephony/twilio/voice"
    good = compute_signature(TOKEN, url, PARAMS)
    assert signed.post("/telephony/twilio/voice", data=PARAMS, headers={SIGNATURE_HEADER: good}).status_code == 200
    assert signed.post("/telephony/twilio/voice", data=PARAMS).status_code == 403
    ws_sig = compute_signature(TOKEN, "wss://testserver/telephony/twilio")  # the test client's WebSocket host
    with signed.websocket_connect("/telephony/twilio", headers={SIGNATURE_HEADER: ws_sig}) as ws:
        assert ws.receive_text() == "ok"
    assert signed.post("/v1/other").status_code == 401  # elsewhere the key rule stands


def test_with_api_keys_on_the_webhooks_stream_url_carries_a_single_use_token() -> None:
    signed = guarded_webhook(TOKEN)
    good = compute_signature(TOKEN, "https://voice.example.com/telephony/twilio/voice", PARAMS)
    r = signed.post("/telephony/twilio/voice", data=PARAMS, headers={SIGNATURE_HEADER: good})
    stream = ET.fromstring(r.text.split("?>", 1)[1]).find("./Connect/Stream")
    assert stream is not None
    url = stream.get("url", "")
    assert url.startswith("wss://voice.example.com/telephony/twilio?token=")
    path = url.removeprefix("wss://voice.example.com")
    with signed.websocket_connect(path) as ws:  # no signature (a proxy rewrote the URL): the token lets it in
        assert ws.receive_text() == "ok"
    with pytest.raises(WebSocketDisconnect), signed.websocket_connect(path):  # used once
        pass
    with pytest.raises(WebSocketDisconnect), signed.websocket_connect("/telephony/twilio?token=forged.token"):
        pass
