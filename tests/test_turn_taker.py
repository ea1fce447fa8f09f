"""The turn-taker and its turns with fakes for chat and speech and a fake clock: what is
held, what is released, what an interruption keeps. No models, no sockets."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from services.server.echo import EchoGuard
from services.server.eot_model import EndOfTurnModel, EotCues
from services.server.session.channel import Outbox
from services.server.session.playout import Playout
from services.server.session.turn import Outcome, Turn, TurnDeps, TurnState
from services.server.session.turn_taker import TurnTaker
from shared.clients import Words
from shared.config import ServerSettings
from shared.protocol import Interrupted, Metrics, ResponseText, Resumed, TranscriptOut, TtsStreamEnd
from testing.fakes import FakeChat, FakeClock, FakeSpeeches, RecordingChannel, eventually

CFG = ServerSettings(streaming_stt=False, end_of_turn_policy="text")


class Rig:
    def __init__(self, reply: str = "Sure. Here is my answer to you, in a few short words.", p_end: float | None = 0.9,
                 counting: bool = False, cfg: ServerSettings = CFG) -> None:
        self.clock = FakeClock()
        self.channel = RecordingChannel()
        self.outbox = Outbox(self.channel, on_gone=lambda: None)
        self.outbox.start()
        self.playout = Playout(EchoGuard(), self.clock)
        self.chat, self.speeches = FakeChat(reply, p_end), FakeSpeeches(samples_per_piece=4800, counting=counting)  # 0.2 s a piece
        deps = TurnDeps(chat=self.chat, open_speech=self.speeches, outbox=self.outbox,  # type: ignore[arg-type]
                        on_audio_sent=self.playout.on_sent, voice=None)
        self.tt = TurnTaker(deps, self.playout, cfg, "You are terse.", clock=self.clock)

    def speculate(self, text: str) -> None:
        async def transcribe() -> str:
            return text

        self.tt.speculate(self.clock(), transcribe, None)

    async def answer(self, text: str) -> Turn:
        """A turn that speculates on `text`, confirmed at once, and everything it sent."""
        turn = self.tt.open_turn()
        self.speculate(text)
        await self.tt.promote(turn)
        await self.settle()
        return turn

    async def settle(self) -> None:
        """Let the turn's task and the outbox's writer run to quiet."""
        for _ in range(50):
            await asyncio.sleep(0)
        await self.outbox.drain()


async def test_a_speculated_answer_is_held_until_confirmed_then_released_in_order():
    rig = Rig()
    turn = rig.tt.open_turn()
    rig.speculate("What time is it?")
    assert turn.state == TurnState.SPECULATING
    await rig.settle()
    assert turn.outcome == Outcome.ANSWERED and rig.channel.sent == []  # all computed, nothing out
    await rig.tt.promote(turn)
    await rig.settle()
    kinds = rig.channel.types()
    assert kinds[0] == "transcript" and kinds[-2:] == ["tts_stream_end", "metrics"]
    assert "audio" in kinds and kinds.index("response_text") < kinds.index("audio")
    assert rig.channel.of(TranscriptOut)[0].text == "What time is it?"
    assert "".join(m.text for m in rig.channel.of(ResponseText)) == rig.chat.reply
    assert all(t == turn.id for t, _ in (m for m in rig.channel.sent if isinstance(m, tuple)))
    assert rig.tt.active is None and rig.tt.last is turn and turn.state == TurnState.DONE
    assert rig.tt.prompt()[-2:] == [{"role": "user", "content": "What time is it?"}, {"role": "assistant", "content": rig.chat.reply}]


@pytest.mark.parametrize(("text", "sentence_end", "p_end"), [("What time is it?", 0.95, 0.9), ("I would like to.", 0.05, 0.01)])
async def test_the_learned_policy_waits_as_long_as_its_model_says(text, sentence_end, p_end):
    """SERVER_END_OF_TURN_POLICY=learned: the shipped model's wait for the turn's cues (the
    STT's sentence-end reading among them); before the cues are in, the unsure wait."""
    rig = Rig(p_end=p_end, cfg=ServerSettings(streaming_stt=False, end_of_turn_policy="learned"))
    turn = rig.tt.open_turn()
    gate = asyncio.Event()

    async def transcribe() -> Words:
        await gate.wait()
        return Words(text, sentence_end)

    rig.tt.speculate(rig.clock(), transcribe, None, speech_s=2.0)
    assert rig.tt.wait_for(turn) == rig.tt.turn_cap  # no words yet
    gate.set()
    await rig.settle()
    model = EndOfTurnModel.shipped()
    want = model.wait_ms(EotCues(text, p_end, None, 2.0, sentence_end)) / 1000
    assert rig.tt.wait_for(turn) == pytest.approx(want)
    assert not await rig.tt.end_if_due(want - 0.05, stalled=False) and turn.state == TurnState.SPECULATING
    assert await rig.tt.end_if_due(want, stalled=False) and turn.confirmed
    if sentence_end < 0.5:  # a fragment Whisper doubts waits longer than a question it is sure of
        sure = model.wait_ms(EotCues("What time is it?", 0.9, None, 2.0, 0.95)) / 1000
        assert want > sure


async def test_the_user_going_on_drops_the_held_answer_and_the_turn_keeps_its_id():
    rig = Rig()
    turn = rig.tt.open_turn()
    rig.speculate("I would like to")
    await rig.settle()
    assert await rig.tt.user_went_on() and turn.state == TurnState.LISTENING
    rig.speculate("I would like to book a table.")
    await rig.tt.promote(turn)
    await rig.settle()
    assert [m.text for m in rig.channel.of(TranscriptOut)] == ["I would like to book a table."]
    assert rig.channel.of(TranscriptOut)[0].turn_id == turn.id
    assert rig.chat.prompts[-1][-1]["content"] == "I would like to book a table."


async def test_the_user_going_on_is_not_held_by_work_that_ignores_a_cancel():
    """A lost cancel (a library's cleanup absorbs it) must not hold the session's input path,
    which awaits the speculation's end: it is cancelled again, and the turn listens on."""
    rig = Rig()
    turn = rig.tt.open_turn()
    lost = []

    async def transcribe() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            lost.append("cancel")  # absorbed: the work goes on waiting
        await asyncio.sleep(30)
        return "never"

    rig.tt.speculate(rig.clock(), transcribe, None)
    await asyncio.sleep(0)
    t0 = time.monotonic()
    assert await asyncio.wait_for(rig.tt.user_went_on(), 5.0)
    assert time.monotonic() - t0 < 1.5 and lost == ["cancel"] and turn.state == TurnState.LISTENING
    rig.speculate("I would like to book a table.")
    await rig.tt.promote(turn)
    await rig.settle()
    assert [m.text for m in rig.channel.of(TranscriptOut)] == ["I would like to book a table."]


async def test_an_interruption_keeps_in_memory_only_what_was_heard():
    rig = Rig()
    turn = await rig.answer("Tell me a story.")
    pieces = rig.speeches.opened[0].said
    assert len(pieces) >= 2
    assert rig.tt.speaking()  # all sent, still playing on the client
    rig.clock.advance(0.25)  # the first piece (0.2 s) and a quarter of the second were heard
    await rig.tt.interrupt()
    await rig.settle()
    (cut,) = rig.channel.of(Interrupted)
    assert cut.turn_id == turn.id and cut.played_ms == pytest.approx(250, abs=1)
    assert isinstance(rig.channel.sent[-1], Metrics)
    heard = rig.tt.prompt()[-1]["content"]
    assert heard.startswith(pieces[0]) and len(heard) < len(rig.chat.reply)
    assert not rig.tt.speaking() and turn.state == TurnState.INTERRUPTED
    rig.tt.ack(turn.id, 100.0)  # an ack still in flight for the cut turn does not restart the play clock
    assert not rig.playout.playing()


async def test_speech_that_breaks_mid_reply_is_told_at_once_and_the_rest_goes_as_text():
    """The TTS stream breaks after the first piece: the user is told (`tts_failed`) while the
    chat is still writing, not once it is done; the reply goes on as text, nothing more is said."""
    rig = Rig(reply=" ".join(["And then a few more words."] * 20))
    rig.chat.delay = 0.005  # still writing when the speech breaks
    rig.speeches.options["breaks_after"] = 1
    turn = await rig.answer("Tell me a long story.")
    assert await eventually(lambda: turn.outcome is not None)
    await rig.settle()
    errors = [i for i, m in enumerate(rig.channel.sent) if getattr(m, "type", "") == "error"]
    texts = [i for i, m in enumerate(rig.channel.sent) if isinstance(m, ResponseText)]
    assert [rig.channel.sent[i].code for i in errors] == ["tts_failed"]  # type: ignore[union-attr]
    assert errors[0] < texts[len(texts) // 2]  # told while the chat was still writing
    assert "".join(rig.channel.sent[i].text for i in texts) == rig.chat.reply  # type: ignore[union-attr]
    assert len(rig.speeches.opened[0].said) < 5  # nothing more was given to the broken speech
    assert turn.outcome == Outcome.ANSWERED and isinstance(rig.channel.sent[-1], Metrics)


async def test_speech_that_breaks_once_the_chat_is_done_still_answers_in_text():
    """The chat wrote it all before the speech broke (TTS is the slower stage): one `tts_failed`,
    and the turn is answered (the user has all of its text) and remembered."""
    rig = Rig(reply=" ".join(["And then a few more words."] * 5))
    rig.speeches.options["breaks_after"] = 1
    turn = await rig.answer("Tell me a story.")
    assert await eventually(lambda: turn.outcome is not None)
    await rig.settle()
    assert [m.code for m in rig.channel.sent if getattr(m, "type", "") == "error"] == ["tts_failed"]
    assert turn.outcome == Outcome.ANSWERED and isinstance(rig.channel.sent[-1], Metrics)
    assert rig.tt.prompt()[-1] == {"role": "assistant", "content": rig.chat.reply}


def audio_of(sent: list, turn_id: int) -> np.ndarray:
    return np.concatenate([np.frombuffer(m[1], "<f4") for m in sent if isinstance(m, tuple) and m[0] == turn_id])


async def test_a_paused_reply_that_goes_on_resends_what_was_not_heard_then_the_rest():
    """Speech over the reply pauses it (`interrupted` at once); it was not the user's words:
    `resumed`, and the audio from where the client stopped, each sample once more at most."""
    rig = Rig(reply="Sure. Here is my answer to you, in a few short words. And a few more words after it.", counting=True)
    rig.chat.delay = 0.005  # still generating when paused: its later words wait too
    turn = rig.tt.open_turn()
    rig.speculate("Tell me a story.")
    await rig.tt.promote(turn)
    assert await eventually(lambda: rig.playout.started_at(turn.id) is not None)  # the play clock runs (the client has audio)
    rig.clock.advance(0.05)  # 1200 samples heard
    rig.tt.pause()
    assert turn.state == TurnState.PAUSED and rig.tt.speaking()
    await asyncio.sleep(0.1)  # generation and speech go on meanwhile, held
    await rig.settle()
    (cut,) = rig.channel.of(Interrupted)
    assert cut.turn_id == turn.id and cut.played_ms == pytest.approx(50, abs=1)
    assert not [m for m in rig.channel.sent[rig.channel.sent.index(cut) :] if isinstance(m, tuple)]  # nothing while paused
    rig.tt.resume()
    assert await eventually(lambda: turn.state == TurnState.DONE)  # the chat wrote the rest, and all was queued
    await rig.settle()
    after = rig.channel.sent[rig.channel.sent.index(cut) + 1 :]
    assert isinstance(after[0], Resumed) and after[0].from_ms == cut.played_ms
    again = audio_of(after, turn.id)
    assert again[0] == 1200  # from the first sample not heard
    assert np.array_equal(again, np.arange(1200, 1200 + len(again), dtype="<f4"))  # in order, nothing missing
    assert len(again) + 1200 == 4800 * len(rig.speeches.opened[0].said)  # to the end of the reply
    assert isinstance(after[-1], Metrics) and TtsStreamEnd in map(type, after)
    assert turn.state == TurnState.DONE and rig.tt.paused is None
    assert rig.tt.prompt()[-1]["content"] == rig.chat.reply  # the whole reply is remembered


async def test_a_reply_paused_after_all_of_it_was_sent_ends_again_after_the_resend():
    """All sent (TTS is faster than playback), still playing: the client drops its buffer, and
    its end marker with it, at `interrupted`; after `resumed` the rest and a new `tts_stream_end`."""
    rig = Rig(counting=True)
    turn = await rig.answer("Tell me a story.")
    assert turn.state == TurnState.DONE
    total = len(audio_of(rig.channel.sent, turn.id))
    rig.clock.advance(0.1)  # 2400 samples heard
    rig.tt.pause()
    rig.tt.resume()
    await rig.settle()
    after = rig.channel.sent[next(i for i, m in enumerate(rig.channel.sent) if isinstance(m, Resumed)) + 1 :]
    again = audio_of(after, turn.id)
    assert np.array_equal(again, np.arange(2400, total, dtype="<f4"))  # the rest, once
    assert isinstance(after[-1], TtsStreamEnd) and turn.state == TurnState.DONE


async def test_a_paused_reply_that_is_cut_sends_one_interrupted_and_keeps_what_was_heard():
    rig = Rig()
    turn = await rig.answer("Tell me a story.")
    rig.clock.advance(0.25)
    rig.tt.pause()
    rig.clock.advance(0.4)  # the words check takes a while: the client is not playing meanwhile
    await rig.tt.interrupt()
    await rig.settle()
    (cut,) = rig.channel.of(Interrupted)
    assert cut.played_ms == pytest.approx(250, abs=1) and turn.state == TurnState.INTERRUPTED
    assert rig.channel.of(Resumed) == [] and not rig.tt.speaking()
    heard = rig.tt.prompt()[-1]["content"]
    assert len(heard) < len(rig.chat.reply)


async def test_an_interrupted_turn_sends_nothing_more():
    rig = Rig()
    rig.chat.delay = 0.01  # still generating when cut
    turn = rig.tt.open_turn()
    rig.speculate("Tell me a long story.")
    await rig.tt.promote(turn)
    assert await eventually(lambda: bool(rig.speeches.opened and rig.speeches.opened[0].said))  # it has begun speaking
    await rig.tt.interrupt()
    n = len(rig.channel.sent)
    await asyncio.sleep(0.2)
    await rig.settle()
    after = rig.channel.sent[n:]
    assert all(isinstance(m, (Interrupted, Metrics)) for m in after), after
    assert rig.speeches.opened and rig.speeches.opened[0].said != []


async def test_an_early_answer_the_user_talks_over_is_merged_into_one_turn():
    rig = Rig()
    turn = rig.tt.open_turn()
    rig.speculate("I went to the shop.")
    await rig.settle()
    assert rig.tt.verdict(turn) == "finished" and rig.tt.wait_for(turn) == CFG.confirm_silence
    assert not await rig.tt.end_if_due(CFG.confirm_silence - 0.05, stalled=False)
    assert await rig.tt.end_if_due(CFG.confirm_silence, stalled=False)
    assert rig.tt.early is turn
    await rig.settle()
    await rig.tt.merge_early()  # the user went on: the early answer is cut and forgotten
    await rig.settle()
    assert turn.state == TurnState.MERGED and rig.tt.early is None
    nxt = rig.tt.current
    assert nxt is not None and nxt.replaces == turn.id and nxt.id == turn.id + 1
    assert rig.tt.prompt() == [{"role": "system", "content": "You are terse."}]  # nothing of the merged turn is remembered
    assert rig.channel.of(Interrupted)[0].turn_id == turn.id


async def test_how_long_a_turn_waits_follows_what_its_words_say():
    rig = Rig(p_end=None)
    turn = rig.tt.open_turn()
    rig.speculate("and then I")
    assert rig.tt.wait_for(turn) == rig.tt.turn_cap  # nothing known yet: unsure
    await rig.settle()
    assert rig.tt.verdict(turn) == "unsure"  # words unfinished
    assert await rig.tt.end_if_due(0.0, stalled=True)  # the client stopped sending: over at once


async def test_a_typed_message_is_a_whole_turn():
    rig = Rig()
    await rig.tt.typed("Hello there.")
    await rig.settle()
    assert rig.channel.of(TranscriptOut)[0].text == "Hello there." and rig.channel.of(TtsStreamEnd)


async def test_no_usable_words_is_no_reply():
    rig = Rig()
    turn = await rig.answer(" .")
    assert turn.outcome == Outcome.NOTHING and rig.channel.sent == [] and rig.tt.active is None


async def test_an_empty_sampled_reply_is_asked_again_greedily():
    rig = Rig()

    class EmptyFirst(FakeChat):
        async def stream(self, messages, on_end_of_turn=None, **options):  # type: ignore[no-untyped-def, override]
            self.options = [*getattr(self, "options", []), options]
            if len(self.options) == 1:
                return  # the model ended its line at once
            async for word in super().stream(messages, on_end_of_turn, **options):
                yield word

    rig.tt.deps.chat = EmptyFirst("Oh, hello there.")  # type: ignore[assignment]
    await rig.answer("In 1813.")
    chat = rig.tt.deps.chat
    assert [o.get("temperature") for o in chat.options] == [None, 0]  # type: ignore[attr-defined]
    assert "".join(m.text for m in rig.channel.of(ResponseText)) == "Oh, hello there."
    assert rig.speeches.opened[0].said
