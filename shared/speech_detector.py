"""Speech detection: turns a stream of 16 kHz PCM into utterance events.

The stream is re-cut into fixed hops (10 ms for the energy classifier) before any
decision, so the result is identical whatever frame sizes the client sends, and
every knob is in seconds, never in chunk counts.

A *classifier* scores each hop (energy above an adaptive noise floor, or Silero's
speech probability); the `AudioSpeechDetector` state machine turns scores into
events with hysteresis, a pre-roll, a minimum speech duration, a short pause that
allows speculative work, a longer silence that ends the turn, and a maximum
utterance length.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from shared.audio import STT_RATE, as_float, rms_dbfs


@dataclass(frozen=True)
class DetectorConfig:
    energy_threshold: float = 12.0  # dB above the noise floor to start speech
    hysteresis: float = 4.0  # speech continues down to energy_threshold - hysteresis
    min_level_dbfs: float = -55.0  # nothing quieter than this is speech, whatever the floor
    end_drop_db: float = 35.0  # hops this far below the utterance's peak do not continue speech (breaths, reverb tails)
    min_speech_duration: float = 0.08  # voiced time before speech is declared (keeps "yes")
    pause_duration: float = 0.2  # silence that emits Paused (speculative work may start)
    max_silence_duration: float = 0.9  # silence that ends the utterance
    max_recording_duration: float = 30.0  # an utterance is cut here
    pre_roll: float = 0.3  # audio kept from before the onset so the first phoneme survives
    onset_gap: float = 0.1  # unvoiced time that aborts a not-yet-confirmed onset

    def with_overrides(self, **kw: float | None) -> DetectorConfig:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class SpeechStarted:
    t: float  # stream time of the onset (seconds), pre-roll not included


@dataclass(frozen=True)
class SpeechPaused:
    t: float  # stream time of the last voiced hop's end
    audio: np.ndarray  # the utterance so far


@dataclass(frozen=True)
class SpeechResumed:
    t: float


@dataclass(frozen=True)
class UtteranceEnded:
    t: float  # stream time of the last voiced hop's end
    audio: np.ndarray
    reason: str  # "silence" | "max_duration"


SpeechEvent = SpeechStarted | SpeechPaused | SpeechResumed | UtteranceEnded


# ----------------------------------------------------------------------------- classifiers


class HopClassifier(Protocol):
    hop: int  # samples per decision

    def score(self, hop: np.ndarray, in_speech: bool) -> tuple[bool, bool]:
        """(loud enough to start speech, loud enough to continue it)."""
        ...


class EnergyClassifier:
    """RMS level in dBFS against an adaptive noise floor.

    The floor is the quietest hop of the last `floor_window` seconds (minimum
    statistics): speech always has quieter gaps between syllables and words, so the
    minimum follows the background, whether or not someone is talking, and a noisy
    room is learned within seconds, even when the stream starts in noise. Fluctuating
    noise (babble) has single hops far below its usual level, so the floor is also at
    least the quietest 100 ms average (power) of the window, 2 dB down.
    """

    hop = STT_RATE // 100  # 10 ms

    def __init__(self, cfg: DetectorConfig, floor_window: float = 3.0) -> None:
        self.cfg = cfg
        self._levels: deque[tuple[int, float]] = deque()  # (hop index, level), increasing levels
        self._smoothed: deque[tuple[int, float]] = deque()  # the same over 100 ms averages - 2 dB
        self._last: deque[float] = deque(maxlen=10)  # powers of the last 100 ms of hops
        self._n = 0
        self._window = int(floor_window * STT_RATE / self.hop)
        self.peak = -100.0  # loudest hop of the current utterance

    @property
    def floor(self) -> float:
        return min(max(self._levels[0][1], self._smoothed[0][1], -90.0), -10.0) if self._levels else -90.0

    def _track(self, level: float) -> None:
        self._last.append(10 ** (level / 10))
        smoothed = 10 * np.log10(sum(self._last) / len(self._last) + 1e-12) - 2.0
        for mins, value in ((self._levels, level), (self._smoothed, smoothed)):
            while mins and mins[-1][1] >= value:
                mins.pop()
            mins.append((self._n, value))
            while mins[0][0] <= self._n - self._window:
                mins.popleft()
        self._n += 1

    def score(self, hop: np.ndarray, in_speech: bool) -> tuple[bool, bool]:
        level = rms_dbfs(hop)
        self._track(level)
        start_thr = max(self.floor + self.cfg.energy_threshold, self.cfg.min_level_dbfs)
        # hysteresis never reaches down into the noise itself
        cont_thr = max(start_thr - self.cfg.hysteresis, self.floor + self.cfg.energy_threshold / 2, self.cfg.min_level_dbfs - self.cfg.hysteresis)
        self.peak = max(self.peak, level) if in_speech else max(level, -100.0)
        cont_thr = max(cont_thr, self.peak - self.cfg.end_drop_db)
        return level > start_thr, level > cont_thr


# ----------------------------------------------------------------------------- state machine


class AudioSpeechDetector:
    """Push PCM, get events. Not thread-safe; one per session."""

    def __init__(self, cfg: DetectorConfig | None = None, classifier: HopClassifier | None = None) -> None:
        self.cfg = cfg or DetectorConfig()
        self.clf = classifier or EnergyClassifier(self.cfg)
        self.hop = self.clf.hop
        self._pending = np.zeros(0, np.int16)  # the samples' type is the caller's (the session: int16 from the socket)
        self._samples = 0  # samples consumed (stream clock)
        self._preroll: deque[np.ndarray] = deque(maxlen=max(1, round(self.cfg.pre_roll * STT_RATE / self.hop)))
        self._reset()

    def _reset(self) -> None:
        self.in_speech = False
        self._onset: list[np.ndarray] = []
        self._onset_voiced = 0
        self._onset_gap = 0
        self._utt: list[np.ndarray] = []
        self._utt_samples = 0
        self._silence = 0  # unvoiced samples at the end of the utterance
        self._resume = 0  # voiced samples since a pause
        self._paused = False
        self._last_voiced_t = 0.0

    @property
    def time(self) -> float:
        return self._samples / STT_RATE

    @property
    def paused(self) -> bool:
        """The open utterance is in a pause (Paused was emitted, speech has not resumed)."""
        return self.in_speech and self._paused

    @property
    def silence(self) -> float:
        """Seconds of silence since the last voiced hop of the open utterance."""
        return self._silence / STT_RATE if self.in_speech else 0.0

    def push(self, pcm: np.ndarray) -> list[SpeechEvent]:
        """Feed 16 kHz audio of any length, int16 or float32 (one type per stream); returns the
        events it completed. The utterance audio it hands back is of the same type: samples
        from the socket reach STT as they came."""
        if not len(self._pending):
            self._pending = self._pending.astype(pcm.dtype)
        buf = np.concatenate([self._pending, pcm])
        n = len(buf) // self.hop * self.hop
        self._pending = buf[n:]
        events: list[SpeechEvent] = []
        for i in range(0, n, self.hop):
            self._step(buf[i : i + self.hop], events)
        return events

    def flush(self) -> list[SpeechEvent]:
        """End of stream: close an open utterance."""
        if not self.in_speech:
            return []
        ev = UtteranceEnded(self._last_voiced_t, self._audio(), "silence")
        self._reset()
        return [ev]

    def _audio(self) -> np.ndarray:
        return np.concatenate(self._utt) if self._utt else np.zeros(0, self._pending.dtype)

    @property
    def utterance_samples(self) -> int:
        """Samples in the open utterance so far (pre-roll included); 0 when there is none."""
        return self._utt_samples if self.in_speech else 0

    def sample_at(self, t: float) -> int:
        """Where detector time `t` falls in the open utterance, in samples (0 if before it)."""
        return max(0, self.utterance_samples - int((self.time - t) * STT_RATE))

    def utterance_since(self, start: int) -> np.ndarray:
        """The open utterance's samples from `start` on, to stream it as it grows."""
        need, hops = self.utterance_samples - start, []
        for hop in reversed(self._utt):
            if need <= 0:
                break
            hops.append(hop[-need:] if need < len(hop) else hop)
            need -= len(hop)
        return np.concatenate(hops[::-1]) if hops else np.zeros(0, self._pending.dtype)

    def _step(self, hop: np.ndarray, events: list[SpeechEvent]) -> None:
        start, cont = self.clf.score(as_float(hop), self.in_speech)  # the classifiers read float
        self._samples += len(hop)
        if not self.in_speech:
            self._step_idle(hop, start, events)
        else:
            self._step_speech(hop, start, cont, events)

    def _step_idle(self, hop: np.ndarray, voiced: bool, events: list[SpeechEvent]) -> None:
        cfg = self.cfg
        if not self._onset:
            if not voiced:
                self._preroll.append(hop)
                return
            self._onset_start = self.time - len(hop) / STT_RATE
        self._onset.append(hop)
        if voiced:
            self._onset_voiced += len(hop)
            self._onset_gap = 0
            self._last_voiced_t = self.time
        else:
            self._onset_gap += len(hop)
        if self._onset_gap >= cfg.onset_gap * STT_RATE:  # a click, not speech
            for h in self._onset:
                self._preroll.append(h)
            self._onset, self._onset_voiced, self._onset_gap = [], 0, 0
        elif self._onset_voiced >= cfg.min_speech_duration * STT_RATE:
            self.in_speech = True
            self._utt = [*self._preroll, *self._onset]
            self._utt_samples = sum(len(h) for h in self._utt)
            self._preroll.clear()
            self._onset, self._onset_voiced, self._onset_gap = [], 0, 0
            events.append(SpeechStarted(self._onset_start))

    def _step_speech(self, hop: np.ndarray, start: bool, cont: bool, events: list[SpeechEvent]) -> None:
        cfg = self.cfg
        self._utt.append(hop)
        self._utt_samples += len(hop)
        voiced = start if self._paused else cont  # after a pause, resuming needs the start level
        if voiced:
            self._silence = 0
            self._last_voiced_t = self.time
            if self._paused:
                self._resume += len(hop)
                if self._resume >= cfg.min_speech_duration * STT_RATE:
                    self._paused, self._resume = False, 0
                    events.append(SpeechResumed(self.time))
        else:
            self._silence += len(hop)
            self._resume = 0
        if self._silence >= cfg.max_silence_duration * STT_RATE or self._utt_samples >= cfg.max_recording_duration * STT_RATE:
            reason = "max_duration" if self._silence < cfg.max_silence_duration * STT_RATE else "silence"
            events.append(UtteranceEnded(self._last_voiced_t, self._audio(), reason))
            self._reset()
            self._preroll.clear()
        elif not self._paused and self._silence >= cfg.pause_duration * STT_RATE:
            self._paused = True
            events.append(SpeechPaused(self._last_voiced_t, self._audio()))
