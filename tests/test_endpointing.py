"""The end-of-turn verdict from words, the language model and the sound (no models here)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.server.endpointing import judge, reads_complete
from shared.config import ServerSettings


def turn(text: str | None, lm: float | None = None, sound: float | None = None) -> SimpleNamespace:
    return SimpleNamespace(transcript=text, end_of_turn=lm, sounds_finished=sound)


def test_reads_complete():
    assert reads_complete("I would like a coffee.") and reads_complete("Is it raining?")
    for unfinished in ("I would like a coffee and", "I would like a", "In this regard,", "Well...", "", "so I went to the"):
        assert not reads_complete(unfinished), unfinished


@pytest.mark.parametrize(
    ("text", "lm", "sound", "verdict"),
    [
        ("I would like a coffee.", 0.8, 0.95, "sure"),  # everything agrees: answer at once
        ("I would like a coffee and", 0.05, 0.1, "unfinished"),  # everything agrees: wait long
        ("I would like a coffee.", 0.3, 0.2, "unsure"),  # the voice trails on, the words are not clear enough
        ("I would like a coffee.", 0.8, 0.2, "finished"),  # clearly finished words: the unsure sound does not hold them
        ("I would like a coffee.", 0.05, 0.95, "finished"),  # the model doubts, the sound is clear
        ("In 1813.", 0.05, 0.7, "unsure"),
        ("I would like a coffee and", 0.05, 0.95, "unsure"),
        ("I would like a coffee.", 0.8, None, "finished"),  # no audio model: the words decide
        ("I would like a coffee and", None, None, "unsure"),
    ],
)
def test_judge_combines_words_model_and_sound(text, lm, sound, verdict):
    assert judge(turn(text, lm, sound), ServerSettings()) == verdict  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "lm", "sound", "verdict"),
    [
        ("I would like a coffee and", 0.02, 0.95, "unfinished"),  # an end is very unlikely: the sound alone cannot end it
        ("There was one chance.", 0.02, 0.95, "finished"),  # ...unless words and sound are both sure
        ("There was one chance.", 0.02, 0.6, "unfinished"),
        ("There was one chance.", 0.3, 0.6, "sure"),
    ],
)
def test_an_unlikely_end_waits_long_when_asked(text, lm, sound, verdict):
    assert judge(turn(text, lm, sound), ServerSettings(end_of_turn_unlikely=0.05)) == verdict  # type: ignore[arg-type]
    if verdict == "unfinished":  # off by default: a finished-sounding voice makes it only unsure
        assert judge(turn(text, lm, sound), ServerSettings()) == "unsure"  # type: ignore[arg-type]


def test_text_only_policy_ignores_the_sound():
    cfg = ServerSettings(end_of_turn_policy="text")
    assert judge(turn("Coffee, please.", 0.9, 0.0), cfg) == "finished"  # type: ignore[arg-type]
    assert judge(turn("Coffee and", 0.9, 1.0), cfg) == "unsure"  # type: ignore[arg-type]
