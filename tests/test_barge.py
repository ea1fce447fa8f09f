"""The barge-in judge alone: made-up times and signals, no audio, no models."""

from __future__ import annotations

from services.server.session.barge import (
    LOOK,
    MISSES,
    OVERTURN,
    PREROLL,
    RELISTEN_AFTER,
    RELISTENS,
    BargeJudge,
    CheckWords,
    Do,
    Heard,
    Signals,
    UserFrom,
)

SAID = "The weather today is sunny with a light breeze."


def sig(t: float, *, speech: bool = True, audible: bool = True, contour: bool | None = None, said: str = SAID) -> Signals:
    return Signals(t=t, now=t, speech=speech, echo_audible=audible, follows_contour=contour, said=said)


def test_a_backchannel_shorter_than_the_limit_interrupts_nothing():
    j = BargeJudge(backchannel_max=0.3)
    j.over_reply(10.0)
    assert j.heard == Heard.BARGE
    assert j.tick(sig(10.1)) == [] and j.tick(sig(10.29)) == []
    j.utterance_ended()  # "mhm" ended: nothing happened
    assert j.heard == Heard.USER and j.tick(sig(10.5)) == []


def test_speech_over_the_reply_with_no_echo_possible_barges_in_once_it_outlasts_a_backchannel():
    j = BargeJudge(backchannel_max=0.3)
    j.over_reply(10.0)
    s = sig(10.3, audible=False)
    assert not j.needs_contour(s)
    assert j.tick(s) == [Do.BARGE_IN] and j.heard == Heard.USER


def test_speech_that_follows_our_contour_is_echo_and_is_watched():
    j = BargeJudge(backchannel_max=0.3)
    j.over_reply(10.0)
    s = sig(10.3, contour=True)
    assert j.needs_contour(s)
    assert j.tick(s) == [Do.ECHO] and j.heard == Heard.ECHO
    # looked at again every LOOK; one miss is chance, MISSES in a row re-judge it
    t = 10.3 + LOOK
    assert j.tick(sig(t, contour=False)) == []
    t += LOOK
    actions = j.tick(sig(t, contour=False))
    assert MISSES == 2 and j.heard == Heard.CHECKING
    onset = t - MISSES * LOOK - 0.2
    assert actions[0] == UserFrom(onset - PREROLL)
    assert actions[1] == CheckWords(onset, relistens=RELISTENS, ours=Heard.ECHO, overturn=OVERTURN)


def test_a_contour_miss_then_a_hit_keeps_the_echo():
    j = BargeJudge(backchannel_max=0.3)
    j.over_reply(10.0)
    j.tick(sig(10.3, contour=True))
    assert j.tick(sig(10.3 + LOOK, contour=False)) == []
    assert j.tick(sig(10.3 + 2 * LOOK, contour=True)) == []
    assert j.tick(sig(10.3 + 3 * LOOK, contour=False)) == [] and j.heard == Heard.ECHO


def test_echo_that_goes_on_after_our_playback_is_the_user():
    j = BargeJudge(backchannel_max=0.3)
    j.over_reply(10.0)
    j.tick(sig(10.3, contour=True))
    actions = j.tick(sig(12.0, audible=False))
    assert actions[-1] == Do.BARGE_IN and isinstance(actions[0], UserFrom) and j.heard == Heard.USER


def test_not_our_contour_but_words_decide():
    def checking() -> tuple[BargeJudge, CheckWords]:
        j = BargeJudge(backchannel_max=0.3)
        j.voice_db = -20.0
        j.over_reply(10.0)
        (check,) = j.tick(sig(10.3, contour=False))
        assert isinstance(check, CheckWords) and check.onset == 10.0 and j.heard == Heard.CHECKING
        return j, check

    j, check = checking()
    assert j.heard_words(check, "the weather today is sunny", SAID, -25.0, 10.6, 10.6) == [Do.ECHO]
    assert j.heard == Heard.ECHO_WORDS
    j, check = checking()
    assert j.heard_words(check, "Stop, what about tomorrow?", SAID, -22.0, 10.6, 10.6) == [Do.BARGE_IN]
    j, check = checking()
    assert j.heard_words(check, None, SAID, -22.0, 10.6, 10.6) == [Do.BARGE_IN]  # STT failed: the user's, as without a check
    j, check = checking()
    assert j.heard_words(check, "", SAID, -40.0, 10.6, 10.6) == [Do.ECHO]  # no words, 20 dB under the user: our quiet echo
    j, check = checking()
    assert j.heard_words(check, "", SAID, -24.0, 10.6, 10.6) == [Do.BARGE_IN]  # no words but as loud as the user


def test_a_re_judgement_needs_words_not_ours_twice_and_listens_again_on_silence():
    j = BargeJudge(backchannel_max=0.3)
    check = CheckWords(10.0, relistens=1, ours=Heard.ECHO, overturn=2)
    j.heard = Heard.CHECKING
    again = j.heard_words(check, "", SAID, -30.0, 11.0, 11.0)
    assert again == [CheckWords(10.0, RELISTEN_AFTER, 0, Heard.ECHO, 2)]
    (second,) = j.heard_words(again[0], "So what?", SAID, -30.0, 11.4, 11.4)
    assert isinstance(second, CheckWords) and second.overturn == 1
    assert j.heard_words(second, "So what about tomorrow then?", SAID, -30.0, 11.8, 11.8) == [Do.BARGE_IN]


def test_an_answer_for_an_utterance_that_ended_is_ignored():
    j = BargeJudge(backchannel_max=0.3)
    j.over_reply(10.0)
    (check,) = j.tick(sig(10.3, contour=False))
    j.utterance_ended()
    assert j.heard_words(check, "hello there", SAID, -20.0, 10.6, 10.6) == []


def test_with_interruptions_off_talk_over_is_ignored():
    j = BargeJudge(backchannel_max=0.3, allow_interruptions=False)
    j.over_reply(10.0)
    assert j.heard == Heard.IGNORED and j.tick(sig(12.0, audible=False)) == []
