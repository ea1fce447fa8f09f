"""The STT fast path's encoder windows: the utterance + 5 s, then 5 s more, then Whisper's 30 s."""

from __future__ import annotations

from services.stt.engines.faster_whisper import _windows


def test_windows_grow_before_the_full_30_s():
    assert _windows(2.9, 3000) == [800, 1300, 3000]  # whole seconds, a second of slack
    assert _windows(18.0, 3000) == [2400, 2900, 3000]
    assert _windows(24.0, 3000) == [3000]  # near 30 s: the full window at once
