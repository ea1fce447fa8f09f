"""Token bytes -> text deltas, cut at the first stop sequence.

Text that could still turn into a stop sequence is held back until the next token
shows whether it does, so a stop string never reaches the client, not even in part.
"""

from __future__ import annotations

import codecs


class StopFilter:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """The text that is now safe to send; sets `stopped` when a stop sequence appeared."""
        text = self._held + self._decoder.decode(piece)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held, self.stopped = "", True
            return text[:cut]
        keep = self._partial(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What is left when generation ends without a stop sequence."""
        text, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return text

    def _partial(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop sequence."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
