"""The web client in a real browser: headless Chromium, its fake microphone playing a
corpus clip, talks to the real services through the page served at GET /.

Checks what a person would: their words show up on the page, the assistant answers
with audio that the page's playback worklet actually plays, the per-turn latency is
shown, and the page fits a phone screen. Screenshots go to test-output/browser/.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.browser

OUT_DIR = Path(__file__).resolve().parent.parent / "test-output" / "browser"
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if Path(p).exists()), None)
RATE = 16000
OUT_RATE = 24000
PHONE = {"width": 390, "height": 844}

# Slow on 2 shared CPU cores: generous, but finite, so a broken page fails.
READY_TIMEOUT_MS = 30_000
TRANSCRIPT_TIMEOUT_S = 120
AUDIO_TIMEOUT_MS = 120_000


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace("'", "").replace("\u2019", ""))


def overlap(reference: str, heard: str) -> float:
    """Share of the reference's words present anywhere in what was heard."""
    ref, got = words(reference), set(words(heard))
    return sum(w in got for w in ref) / max(len(ref), 1)


def pick_clip(corpus):  # type: ignore[no-untyped-def]
    """The shortest clip of at least 2 s and 8 words: short to keep the test quick, with
    enough words that one misheard word (Chromium's noise suppression changes the
    signal, and Whisper tiny is small) does not decide the 60% check."""
    fit = [c for c in corpus if len(c.audio) >= 2 * RATE and len(words(c.transcript)) >= 8]
    assert fit, "no corpus clip of 2 s and 8 words or more"
    return min(fit, key=lambda c: len(c.audio))


def write_mic_wav(audio: np.ndarray, path: Path, before: float = 1.0, after: float = 4.0) -> Path:
    """16-bit PCM (24-bit plays as silence in Chromium's fake capture), padded with silence."""
    pad = lambda s: np.zeros(int(s * RATE), dtype=np.int16)  # noqa: E731
    sf.write(path, np.concatenate([pad(before), audio.astype(np.int16), pad(after)]), RATE, subtype="PCM_16")
    return path


def chromium_args(wav: Path) -> list[str]:
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",  # play once, do not loop
    ]


def wait_for(page, expr: str, what: str, timeout_ms: int) -> None:  # type: ignore[no-untyped-def]
    """Wait until a JS expression holds on the page, or fail saying what did not happen."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(expr, timeout=timeout_ms)
    except PlaywrightTimeout:
        state = page.evaluate(
            "window.voiceClient ? JSON.stringify({state: voiceClient.state, stats: voiceClient.stats}) : 'no voiceClient'"
        )
        raise AssertionError(f"{what}: not within {timeout_ms / 1000:.0f} s ({state})") from None


def user_texts(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.eval_on_selector_all("#log .bubble.user:not(.pending)", "els => els.map(e => e.textContent)")


def talk(server: str, reference: str, wav: Path, out: Path, profile: Path) -> dict:
    """Open the page, press Connect, let the fake microphone speak; return what the page showed."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    console: list[str] = []
    result: dict = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(profile),  # a fresh --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=chromium_args(wav),
            viewport={"width": 1000, "height": 760},
        )
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            page.goto(server + "/", wait_until="load")
            assert page.title() == "Voice agent"
            wait_for(page, "window.voiceClient && window.voiceClient.agents.length > 0", "agents listed from GET /agents", READY_TIMEOUT_MS)
            page.click("#connect")
            wait_for(page, "window.voiceClient.state === 'ready'", "session connected (call_ready)", READY_TIMEOUT_MS)
            result["conn_text"] = page.inner_text("#conn")

            # the user's words appear on the page
            deadline = time.time() + TRANSCRIPT_TIMEOUT_S
            heard = ""
            while time.time() < deadline:
                heard = " ".join(user_texts(page))
                if overlap(reference, heard) >= 0.6:
                    break
                page.wait_for_timeout(250)
            result["heard"] = heard
            assert overlap(reference, heard) >= 0.6, f"transcript not on the page: want {reference!r}, page shows {heard!r}"

            # the answer is received and played by the playback worklet
            wait_for(page, f"window.voiceClient.stats.playedSamples > {OUT_RATE // 2}", "0.5 s of the answer played", AUDIO_TIMEOUT_MS)
            # the turn ends: its latency is shown, and playback drains
            wait_for(page, "window.voiceClient.latencies.length > 0", "the turn's latency (metrics) shown", AUDIO_TIMEOUT_MS)
            wait_for(page, "window.voiceClient.stats.bufferedSamples === 0", "playback drained", AUDIO_TIMEOUT_MS)
            page.wait_for_timeout(300)
            result["assistant"] = page.eval_on_selector_all("#log .bubble.assistant", "els => els.map(e => e.textContent)")
            result["latency_badges"] = page.eval_on_selector_all("#log .meta .ms", "els => els.map(e => e.textContent)")
            result["latency_footer"] = page.inner_text("#latency")
            page.screenshot(path=str(out / "screenshot.png"))

            # the same conversation on a phone-sized screen
            page.set_viewport_size(PHONE)
            page.wait_for_timeout(300)
            page.screenshot(path=str(out / "screenshot-phone.png"))
            result["phone_scroll_width"] = page.evaluate("document.documentElement.scrollWidth")
            result["phone_controls_visible"] = all(
                page.is_visible(sel)
                and page.eval_on_selector(
                    sel, "e => { const r = e.getBoundingClientRect(); return r.right <= innerWidth && r.bottom <= innerHeight; }"
                )
                for sel in ("#connect", "#mute", "#text", "#send", "#conn")
            )

            # hang up: the call ends cleanly
            page.click("#connect")
            wait_for(page, "window.voiceClient.state === 'closed'", "hung up", READY_TIMEOUT_MS)
        finally:
            try:  # keep what the page showed, for a person looking at a failure
                result["client"] = page.evaluate(
                    "window.voiceClient ? {stats: window.voiceClient.stats, state: window.voiceClient.state, "
                    "latencies: window.voiceClient.latencies, events: window.voiceClient.events} : null"
                )
                if not (out / "screenshot.png").exists():
                    page.screenshot(path=str(out / "failure.png"))
            except Exception as exc:  # the browser itself failed: report the original error
                result["client"] = {"unavailable": str(exc)}
            (out / "session.json").write_text(json.dumps({**result, "console": console, "errors": errors}, indent=2))
            browser.close()
    result["errors"] = errors
    return result


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
def test_talk_in_browser(system, corpus, tmp_path):  # type: ignore[no-untyped-def]
    pytest.importorskip("playwright.sync_api")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for old in OUT_DIR.glob("*.png"):
        old.unlink()
    clip = pick_clip(corpus)
    wav = write_mic_wav(clip.audio, OUT_DIR / "mic.wav")

    r = talk(system.server, clip.transcript, wav, OUT_DIR, tmp_path / "profile")
    stats = r["client"]["stats"]

    assert not r["errors"], f"JavaScript errors on the page: {r['errors']}"
    assert r["conn_text"] == "connected"
    assert stats["sentFrames"] > 100, "the microphone did not stream (20 ms frames)"
    assert overlap(clip.transcript, r["heard"]) >= 0.6, (
        f"transcript of {clip.id} not on the page: want {clip.transcript!r}, page shows {r['heard']!r}"
    )
    assert stats["receivedSamples"] > OUT_RATE // 2, "no answer audio received"
    assert stats["playedSamples"] > OUT_RATE // 2, f"answer audio not played: {stats}"
    assert stats["playedSamples"] <= stats["receivedSamples"]
    assert stats["acksSent"] >= 1, "no playback acks sent"
    assert any(t.strip() for t in r["assistant"]), "no assistant text on the page"
    assert r["latency_badges"] and re.fullmatch(r"\d+ ms", r["latency_badges"][0]), r["latency_badges"]
    assert "median" in r["latency_footer"]
    assert r["phone_scroll_width"] <= PHONE["width"], "the page scrolls sideways on a phone"
    assert r["phone_controls_visible"], "controls are off screen on a phone"
    assert (OUT_DIR / "screenshot.png").stat().st_size > 0
    assert (OUT_DIR / "screenshot-phone.png").stat().st_size > 0
