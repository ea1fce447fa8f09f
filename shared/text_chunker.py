"""Cuts streamed LLM text into pieces worth speaking.

The first piece is cut early, at the first clause boundary (or after a few words
if none comes), so speech starts while the model is still writing; later pieces
end at sentence boundaries so the voice keeps natural prosody.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s")
_CLAUSE_END = re.compile(r"[,;:—–]\s|[.!?…]+[\"')\]]*\s")
_ABBREV = re.compile(r"\b(?:mr|mrs|ms|dr|st|vs|etc|e\.g|i\.e|no)\.\s$", re.IGNORECASE)


class TextChunker:
    def __init__(self, first_min_words: int = 1, first_max_words: int = 7, min_chars: int = 20) -> None:
        self.first_min_words = first_min_words
        self.first_max_words = first_max_words
        self.min_chars = min_chars
        self._buf = ""
        self._first = True

    def push(self, delta: str) -> list[str]:
        """Add streamed text; return the pieces that are complete."""
        self._buf += delta
        out = []
        while piece := self._cut():
            out.append(piece)
        return out

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        return [rest] if _speakable(rest) else []

    def _cut(self) -> str | None:
        pattern = _CLAUSE_END if self._first else _SENTENCE_END
        start = 0
        while m := pattern.search(self._buf, start):
            head = self._buf[: m.end()]
            start = m.end()
            if _ABBREV.search(head):
                continue
            long_enough = len(head.split()) >= self.first_min_words if self._first else len(head.strip()) >= self.min_chars
            if long_enough and _speakable(head):
                return self._take(m.end())
        if self._first:
            # no clause boundary yet: start speaking after a few words rather than wait for the sentence
            words = list(re.finditer(r"\S+\s", self._buf))
            if len(words) > self.first_max_words:
                return self._take(words[self.first_max_words - 1].end())
        return None

    def _take(self, end: int) -> str:
        head, self._buf = self._buf[:end], self._buf[end:]
        self._first = False
        return head.strip()


def _speakable(text: str) -> bool:
    return any(c.isalnum() for c in text)
