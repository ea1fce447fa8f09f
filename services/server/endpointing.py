"""End of turn: is the user done, from what they said and how it sounded?

Three cues, each read at a pause while the answer is already being computed:
- the words: Whisper's final punctuation and no trailing conjunction (`reads_complete`);
- the language model's probability that the sentence ends there (from the chat
  service, read in the same decode that prefills the reply);
- the sound: Smart Turn v3.2's probability that the speech is a finished turn (from
  the STT service, on the last 8 s of audio).

`judge` turns them into how long a silence ends the turn: "sure" (words and sound
agree it is finished: answer at once), "finished" (the words say so), "unsure", or
"unfinished" (words and sound agree it is not: wait up to SERVER_UNFINISHED_MAX_SILENCE). `bench/endpointing.py`
measures each cue and each combination at real ends and at inner pauses.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from shared.config import ServerSettings

if TYPE_CHECKING:
    from services.server.session.turn import Turn

Verdict = Literal["sure", "finished", "unsure", "unfinished"]

_INCOMPLETE_ENDINGS = {
    "and", "or", "but", "so", "because", "the", "a", "an", "of", "to", "with", "for", "in", "on", "at",
    "that", "which", "who", "if", "then", "um", "uh", "my", "your", "is", "are", "was", "were",
}


def reads_complete(text: str) -> bool:
    """Does a transcript read like a finished thought? (Whisper punctuates what it hears.)"""
    t = text.strip().rstrip("\"')]")
    if not t or t.endswith(("...", "…", ",", ";", ":", "-")) or t[-1] not in ".!?":
        return False
    words = re.findall(r"[a-z0-9']+", t.lower())
    return bool(words) and words[-1] not in _INCOMPLETE_ENDINGS


def judge(turn: Turn, cfg: ServerSettings) -> Verdict:
    words = turn.transcript is not None and reads_complete(turn.transcript)
    lm = turn.end_of_turn is None or turn.end_of_turn >= cfg.end_of_turn_threshold
    text_done = words and lm
    sound = turn.sounds_finished if cfg.end_of_turn_policy != "text" else None
    if sound is None:  # no audio model (or the text-only policy): the words decide
        return "finished" if text_done else "unsure"
    sound_done = sound >= cfg.audio_end_threshold
    if cfg.end_of_turn_policy == "audio":
        return "finished" if sound_done else "unfinished"
    # The language model separates ends from pauses better than Smart Turn does on the
    # speech we measured (bench/endpointing.py: AUC 0.92 against 0.73), so its clear
    # readings are not overruled by an unsure sound: clearly finished words end the turn
    # quickly. Optionally (SERVER_END_OF_TURN_UNLIKELY, off by default), a sentence that almost
    # surely goes on waits long unless words and sound are sure: fewer replies inside 1-2 s
    # pauses (3 of 12 against 7 in bench/turn_taking.py), but short finished sentences the
    # live transcript left without a full stop ("In 1813") waited 2.5 s (2 of 24 corpus clips).
    p = turn.end_of_turn
    if words and p is not None and p >= cfg.end_of_turn_clear:
        return "sure" if sound_done else "finished"
    if p is not None and p < cfg.end_of_turn_unlikely and not (words and sound >= cfg.audio_sure_threshold):
        return "unfinished"
    if text_done and sound_done:
        return "sure"
    if not text_done and not sound_done:
        return "unfinished"
    return "finished" if sound >= cfg.audio_sure_threshold and words else "unsure"
