"""Fault injection: the session server with its STT and chat services down says so, and lives on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from testing.session_client import stream_pcm
from tests.conftest import ROOT, system_env, wait_ready

BASE = 29000


@pytest.fixture(scope="module")
def lonely_server():
    env = {**system_env(BASE), "SERVER_STT_URL": "http://127.0.0.1:9", "SERVER_CHAT_URL": "http://127.0.0.1:9"}
    proc = subprocess.Popen([sys.executable, "launcher.py", "--services", "server"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{BASE}", 60, proc)
        yield f"ws://127.0.0.1:{BASE}/ws/"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


async def test_services_down_give_recoverable_errors(lonely_server, corpus):
    typed = [(4.0, json.dumps({"type": "transcript", "text": "Are you there?"}))]
    res = await stream_pcm(lonely_server, corpus[0].audio, tail=4.0, extra=typed, wait_for_end=3)
    codes = [e["code"] for e in res.of("error")]
    assert "stt_failed" in codes and "chat_failed" in codes
    assert all(e["recoverable"] for e in res.of("error"))
    assert res.close_code is None  # the session stayed open
    assert res.transcripts == ["Are you there?"]  # the typed turn got as far as it could
    assert res.audio_seconds() == 0


async def test_silence_only_session_is_quiet(lonely_server):
    res = await stream_pcm(lonely_server, np.zeros(16000 * 2, np.int16), wait_for_end=1)
    assert [e.type for e in res.events] == ["call_ready"]
