"""Audio conversions and resampling on synthetic signals."""

import numpy as np
import pytest

from shared.audio import (
    AudioDecodeError,
    StreamResampler,
    active_level,
    decode_audio,
    f32le_to_float,
    float_to_f32le,
    float_to_pcm16,
    pcm16_to_float,
    resample,
    rms_dbfs,
    split_chunks,
    wav_bytes,
)


def tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


def test_pcm16_roundtrip_and_clipping():
    x = np.array([0.0, 0.5, -0.5, 1.5, -1.5], np.float32)
    y = pcm16_to_float(float_to_pcm16(x).tobytes())
    assert np.allclose(y[:3], x[:3], atol=1 / 32768)
    assert y[3] == pytest.approx(32767 / 32768) and y[4] == -1.0  # clipped, not wrapped


def test_odd_length_pcm_drops_the_last_byte():
    assert len(pcm16_to_float(b"\x00\x10\x00")) == 1


def test_f32le_roundtrip():
    x = tone(440, 24000, 0.1)
    assert np.array_equal(f32le_to_float(float_to_f32le(x)), x)


@pytest.mark.parametrize(("src", "dst"), [(22050, 24000), (16000, 24000), (48000, 16000), (44100, 16000)])
def test_resample_keeps_pitch_and_length(src, dst):
    x = tone(1000, src, 1.0)
    y = resample(x, src, dst)
    assert abs(len(y) - dst) <= 2
    assert dominant_freq(y, dst) == pytest.approx(1000, abs=3)
    assert rms_dbfs(y) == pytest.approx(rms_dbfs(x), abs=0.2)


def test_resample_removes_content_above_new_nyquist():
    x = tone(7000, 48000, 0.5)  # above 4 kHz: must not alias into an 8 kHz signal
    y = resample(x, 48000, 8000)
    assert rms_dbfs(y) < rms_dbfs(x) - 40


def test_stream_resampler_matches_one_shot():
    x = tone(440, 22050, 1.0)
    rs = StreamResampler(22050, 24000)
    parts = [rs.push(c) for c in np.array_split(x, 17)] + [rs.push(np.zeros(0, np.float32), last=True)]
    y = np.concatenate(parts)
    ref = resample(x, 22050, 24000)
    assert abs(len(y) - len(ref)) <= 2
    n = min(len(y), len(ref)) - 200
    assert np.max(np.abs(y[200:n] - ref[200:n])) < 1e-2  # no clicks at chunk borders


def test_rms_dbfs_levels():
    assert rms_dbfs(np.zeros(160, np.float32)) < -90
    assert rms_dbfs(np.ones(160, np.float32)) == pytest.approx(0, abs=0.01)
    assert rms_dbfs(tone(100, 16000, 1, amp=1.0)) == pytest.approx(-3.01, abs=0.05)


def test_active_level_ignores_the_silence_around_speech():
    speech = tone(200, 16000, 0.5, amp=0.1)  # -23 dBFS
    padded = np.concatenate([np.zeros(16000, np.float32), speech, np.zeros(8000, np.float32)])
    assert rms_dbfs(padded) < -28  # the plain RMS falls with the silence around it
    assert active_level(padded) == pytest.approx(rms_dbfs(speech), abs=0.5)
    assert active_level(np.zeros(100, np.float32)) == -100.0  # shorter than a hop


def test_decode_wav_any_rate_to_16k_mono():
    stereo_rate = 44100
    x = tone(500, stereo_rate, 0.5)
    data = wav_bytes(x, stereo_rate)
    y = decode_audio(data)
    assert abs(len(y) - 8000) <= 2 and dominant_freq(y, 16000) == pytest.approx(500, abs=3)


def test_decode_rejects_non_audio():
    with pytest.raises(AudioDecodeError):
        decode_audio(b"this is not audio at all")
    with pytest.raises(AudioDecodeError):
        decode_audio(b"")


def test_split_chunks_bounds_size():
    parts = split_chunks(np.zeros(24000, np.float32), 24000, 80)
    assert all(len(p) <= 1920 for p in parts) and sum(len(p) for p in parts) == 24000
