"""Incremental audio encoders: 24 kHz float32 chunks in, bytes of a container out, as
they are produced (so a streamed response starts before the synthesis ends).

wav and pcm are written here (16-bit mono); mp3 (LAME), opus (libopus in Ogg), flac
and aac (ADTS) go through PyAV's FFmpeg encoders, fed frame by frame.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from typing import Any, Literal

import numpy as np

from shared.audio import OUT_RATE, float_to_pcm16

AudioFormat = Literal["wav", "pcm", "mp3", "opus", "flac", "aac"]
FORMATS: tuple[str, ...] = ("wav", "pcm", "mp3", "opus", "flac", "aac")
MEDIA_TYPES: dict[str, str] = {
    "wav": "audio/wav", "pcm": "audio/pcm", "mp3": "audio/mpeg", "opus": "audio/ogg",
    "flac": "audio/flac", "aac": "audio/aac",
}
# format -> (container, encoder)
_AV: dict[str, tuple[str, str]] = {"mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus"), "flac": ("flac", "flac"), "aac": ("adts", "aac")}


def wav_stream_header(rate: int = OUT_RATE) -> bytes:
    """A RIFF header whose sizes are unknown (0xFFFFFFFF), as streaming servers send it:
    decoders read to the end of the data."""
    byte_rate = rate * 2
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, byte_rate, 2, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


class _Sink:
    """The file PyAV writes to: collects bytes until the caller takes them. Not seekable,
    so muxers write in streaming mode (no seek back to patch headers)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class Encoder:
    """push(chunk) -> bytes ready now; finish() -> the rest. One per response."""

    def __init__(self, fmt: str, rate: int = OUT_RATE) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unsupported audio format {fmt!r}")
        self.fmt, self.rate, self._pts, self._started = fmt, rate, 0, False
        self.media_type = MEDIA_TYPES[fmt]
        self._container: Any = None
        if fmt in _AV:
            import av

            container_fmt, codec = _AV[fmt]
            self._sink = _Sink()
            # small I/O buffer: bytes reach the client within a frame or two, not 32 KB later
            # Ogg pages of 100 ms instead of 1 s, for the same reason
            opts = {"page_duration": "100000"} if container_fmt == "ogg" else {}
            self._container = av.open(self._sink, mode="w", format=container_fmt, buffer_size=4096, container_options=opts)
            self._stream = self._container.add_stream(codec, rate=rate, layout="mono")
            if fmt in ("mp3", "aac"):
                self._stream.bit_rate = 64_000
            elif fmt == "opus":
                self._stream.bit_rate = 32_000

    def push(self, x: np.ndarray) -> bytes:
        pcm = float_to_pcm16(np.asarray(x, dtype=np.float32))
        if self._container is None:
            head = b""
            if self.fmt == "wav" and not self._started:
                head = wav_stream_header(self.rate)
            self._started = True
            return head + pcm.tobytes()
        if pcm.size == 0:
            return b""
        import av

        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = self.rate, self._pts
        self._pts += pcm.size
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        if self._container is None:
            return wav_stream_header(self.rate) if self.fmt == "wav" and not self._started else b""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()


def encode_all(x: np.ndarray, fmt: str, rate: int = OUT_RATE) -> bytes:
    """A whole clip in one container (for the JSON answers that carry base64 audio)."""
    if fmt == "wav":
        from shared.audio import wav_bytes

        return wav_bytes(x, rate)  # with real sizes: some players dislike the streaming header
    enc = Encoder(fmt, rate)
    return enc.push(x) + enc.finish()


class Tempo:
    """Speed change without a pitch change (FFmpeg's atempo), chunk by chunk."""

    def __init__(self, speed: float, rate: int = OUT_RATE) -> None:
        import av.filter

        self.rate, self._pts = rate, 0
        self._graph = av.filter.Graph()
        node = src = self._graph.add_abuffer(format="flt", sample_rate=rate, layout="mono", time_base=Fraction(1, rate))
        # one atempo takes 0.5-100; slower speeds are two in a row
        factors = [speed] if speed >= 0.5 else [0.5, speed / 0.5]
        for f in factors:
            nxt = self._graph.add("atempo", f"{f:.4f}")
            node.link_to(nxt)
            node = nxt
        sink = self._graph.add("abuffersink")
        node.link_to(sink)
        self._graph.configure()
        self._src = src

    def push(self, x: np.ndarray | None) -> np.ndarray:
        import av

        if x is None:
            self._graph.push(None)
        else:
            frame = av.AudioFrame.from_ndarray(np.asarray(x, np.float32).reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate, frame.pts = self.rate, self._pts
            self._pts += frame.samples
            self._graph.push(frame)
        out = []
        while True:
            try:
                out.append(self._graph.pull().to_ndarray().reshape(-1))
            except (av.error.BlockingIOError, av.error.EOFError):
                break
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


async def tempo_stream(audio: Any, speed: float) -> Any:
    """An async iterator of chunks, sped up or slowed down by `speed`."""
    import asyncio

    t = Tempo(speed)
    async for chunk in audio:
        if (y := await asyncio.to_thread(t.push, chunk)).size:
            yield y
    if (y := await asyncio.to_thread(t.push, None)).size:
        yield y
