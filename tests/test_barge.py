"""The barge-in judge alone: made-up times and signals, no audio, no models."""

from __future__ import annotations

from services.server.session.barge import (
    LOOK,
    MISSES,
    OVERTURN,
    PAUSE_AFTER,
    PREROLL,
    RELISTEN_AFTER,
    RELISTENS,
    SETTLE,
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


def test_speech_shorter_than_the_pause_threshold_does_nothing():
    j = BargeJudge(backchannel_max=0.6)
    assert j.over_reply(10.0) == [] and j.heard == Heard.BARGE
    assert j.tick(sig(10.1)) == [] and j.tick(sig(10.24)) == []
    assert j.utterance_ended() == []  # a click, a breath: nothing happened
    assert j.heard == Heard.USER and j.tick(sig(10.5)) == []


def held(backchannel_max: float = 0.6) -> tuple[BargeJudge, CheckWords]:
    """Speech over our reply that is not our echo: paused after PAUSE_AFTER, the words checked
    once it has lasted `backchannel_max`."""
    j = BargeJudge(backchannel_max=backchannel_max)
    j.voice_db = -20.0
    j.over_reply(10.0)
    s = sig(10.0 + PAUSE_AFTER, contour=False)
    assert j.needs_contour(s)
    pause, check = j.tick(s)
    assert pause == Do.PAUSE and j.heard == Heard.HELD
    assert check == CheckWords(10.0, backchannel_max - PAUSE_AFTER, relistens=1)
    return j, check


def test_speech_over_the_reply_pauses_it_within_300_ms_and_the_users_words_cut_it():
    assert PAUSE_AFTER <= 0.3
    j, check = held()
    assert j.heard_words(check, "Stop, what about tomorrow?", SAID, -22.0, 10.6, 10.6) == [Do.BARGE_IN]
    assert j.heard == Heard.USER
    j, check = held()
    assert j.heard_words(check, None, SAID, -22.0, 10.6, 10.6) == [Do.BARGE_IN]  # STT failed: the user's, as without a check
    j, check = held()
    assert j.heard_words(check, "Stop.", SAID, -22.0, 10.6, 10.6, going_on=False) == [Do.BARGE_IN]  # "stop" is enough
    j, check = held()  # another lone word that has stopped: a backchannel Whisper misheard ("yeah" as "year")
    assert j.heard_words(check, "Year.", SAID, -22.0, 10.6, 10.6, going_on=False) == [Do.RESUME]
    j, check = held()
    assert j.heard_words(check, "Tomorrow then.", SAID, -22.0, 10.6, 10.6, going_on=False) == [Do.BARGE_IN]


def test_with_no_echo_possible_it_pauses_without_asking_the_contour():
    j = BargeJudge(backchannel_max=0.6)
    j.over_reply(10.0)
    s = sig(10.3, audible=False)
    assert not j.needs_contour(s)
    assert j.tick(s)[0] == Do.PAUSE and j.heard == Heard.HELD


def test_a_paused_reply_goes_on_when_it_was_not_the_users_words():
    j, check = held()  # our own words came back, and stopped with the pause: echo, watched
    assert j.heard_words(check, "the weather today is sunny", SAID, -25.0, 10.6, 10.6, going_on=False) == [Do.RESUME, Do.ECHO]
    assert j.heard == Heard.ECHO_WORDS
    j, check = held()  # our words, but the speech goes on after we stopped: heard again with more of it
    (again,) = j.heard_words(check, "the weather today", SAID, -25.0, 10.6, 10.6)
    assert isinstance(again, CheckWords) and again.relistens == 0
    assert again.onset == 10.0 + PAUSE_AFTER + SETTLE  # only what came after our voice left the room
    assert j.heard_words(again, "the weather today, is it going to rain later?", SAID, -25.0, 11.0, 11.0) == [Do.BARGE_IN]
    j, check = held()  # "mhm", over: a backchannel
    assert j.heard_words(check, "Mm-hmm.", SAID, -22.0, 10.6, 10.6, going_on=False) == [Do.RESUME]
    assert j.heard == Heard.BACKCHANNEL
    j, check = held()  # a cough (no words), over
    assert j.heard_words(check, "", SAID, -22.0, 10.6, 10.6, going_on=False) == [Do.RESUME]
    j, check = held()  # no words going on, 20 dB under the user: our quiet echo
    assert j.heard_words(check, "", SAID, -40.0, 10.6, 10.6) == [Do.RESUME, Do.ECHO]
    j, check = held()  # the utterance ended before the words came
    assert j.utterance_ended() == [Do.RESUME]
    assert j.heard_words(check, "hello there", SAID, -20.0, 10.6, 10.6) == []


def test_speech_without_words_that_goes_on_is_heard_again_then_is_the_users():
    j, check = held()
    again = j.heard_words(check, "", SAID, -22.0, 10.6, 10.6)
    assert again == [CheckWords(10.0, RELISTEN_AFTER, 0, Heard.ECHO_WORDS, 1)] and j.heard == Heard.HELD
    assert j.heard_words(again[0], "", SAID, -22.0, 11.0, 11.0) == [Do.BARGE_IN]  # Whisper drops a person's first words
    j, check = held()
    again = j.heard_words(check, "Yeah", SAID, -22.0, 10.6, 10.6)  # "yeah, but ..." goes on
    assert isinstance(again[0], CheckWords)
    assert j.heard_words(again[0], "Yeah, but what about tomorrow?", SAID, -22.0, 11.0, 11.0) == [Do.BARGE_IN]


def test_after_a_backchannel_speech_that_goes_on_is_judged_afresh():
    j, check = held()
    j.heard_words(check, "Mm-hmm.", SAID, -22.0, 10.6, 10.6, going_on=False)
    assert j.tick(sig(11.0)) == [] and j.heard == Heard.BARGE and j.onset == 11.0
    assert j.tick(sig(11.0 + PAUSE_AFTER, contour=False))[0] == Do.PAUSE


def test_the_user_going_on_just_after_an_early_answer_pauses_it_at_once():
    j = BargeJudge(backchannel_max=0.6)
    pause, check = j.over_reply(10.0, at_once=True)
    assert pause == Do.PAUSE and check == CheckWords(10.0, 0.6, relistens=1, continuation=True) and j.heard == Heard.HELD
    # speech that stopped at once was our echo's first syllable or a breath, whatever Whisper made of it
    assert j.heard_words(check, "But more.", SAID, -22.0, 10.6, 10.6, going_on=False) == [Do.RESUME]
    assert j.echo_heard  # speech that stopped with the pause: most likely our echo's onset
    j.echo_heard = False
    j.over_reply(10.0, at_once=True)
    assert j.heard_words(check, "and then it rained", SAID, -22.0, 10.6, 10.6) == [Do.BARGE_IN]
    # once our voice has come back in the session (a speakerphone), going on is judged like any talk-over
    j.echo_heard = True
    assert j.over_reply(10.0, at_once=True) == [] and j.heard == Heard.BARGE
    off = BargeJudge(backchannel_max=0.6, allow_interruptions=False)
    assert off.over_reply(10.0, at_once=True) == [] and off.heard == Heard.IGNORED


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


def test_a_re_judgement_needs_words_not_ours_twice_and_listens_again_on_silence():
    j = BargeJudge(backchannel_max=0.3)
    check = CheckWords(10.0, relistens=1, ours=Heard.ECHO, overturn=2)
    j.heard = Heard.CHECKING
    again = j.heard_words(check, "", SAID, -30.0, 11.0, 11.0)
    assert again == [CheckWords(10.0, RELISTEN_AFTER, 0, Heard.ECHO, 2)]
    (second,) = j.heard_words(again[0], "So what?", SAID, -30.0, 11.4, 11.4)
    assert isinstance(second, CheckWords) and second.overturn == 1
    assert j.heard_words(second, "So what about tomorrow then?", SAID, -30.0, 11.8, 11.8) == [Do.BARGE_IN]


def test_with_interruptions_off_talk_over_is_ignored():
    j = BargeJudge(backchannel_max=0.3, allow_interruptions=False)
    j.over_reply(10.0)
    assert j.heard == Heard.IGNORED and j.tick(sig(12.0, audible=False)) == []
