"""Word error rate with light English normalisation, for tests and benchmarks."""

from __future__ import annotations

import re

_ABBREV = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "i'm": "i am", "it's": "it is"}


_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def _under_100(n: int) -> str:
    return _ONES[n] if n < 20 else _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])


def number_words(n: int) -> str:
    """English words for 0..9999, years read the usual way (1813: eighteen thirteen)."""
    if 1100 <= n <= 1999 and n % 100 != 0:
        return f"{_under_100(n // 100)} {_under_100(n % 100) if n % 100 >= 10 else 'oh ' + _ONES[n % 100]}"
    if n < 100:
        return _under_100(n)
    if n < 1000:
        return f"{_ONES[n // 100]} hundred" + (f" {_under_100(n % 100)}" if n % 100 else "")
    if n < 10000:
        return f"{_ONES[n // 1000]} thousand" + (f" {number_words(n % 1000)}" if n % 1000 else "")
    return str(n)


def normalise(text: str) -> list[str]:
    t = text.lower().replace("-", " ")
    t = re.sub(r"[^a-z0-9' ]+", " ", t)
    t = re.sub(r"\d+", lambda m: number_words(int(m.group())), t)
    words = [w.strip("'") for w in t.split()]
    return " ".join(_ABBREV.get(w, w) for w in words if w).split()


def edits(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus-level WER: total edits over total reference words."""
    e = n = 0
    for r, h in zip(refs, hyps, strict=True):
        rw, hw = normalise(r), normalise(h)
        e += edits(rw, hw)
        n += len(rw)
    return e / max(n, 1)
