"""The launcher: subsets, readiness, a clear failure, restart after a crash, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, system_env, wait_ready

BASE = 38000


def launch(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "launcher.py", "--combined-logs", *args], cwd=ROOT,
                            env={**system_env(BASE), **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def pid_on(port: int) -> int:
    """The uvicorn process serving `port` (StopIteration if none)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"uvicorn" in args and str(port).encode() in args:
            return int(pid)
    raise StopIteration


def test_subset_restart_and_clean_stop():
    proc = launch("--services", "tts")
    try:
        wait_ready(f"http://127.0.0.1:{BASE + 3}", 120, proc)
        with pytest.raises(OSError):  # only the subset runs
            urllib.request.urlopen(f"http://127.0.0.1:{BASE}/health", timeout=1)
        first = pid_on(BASE + 3)
        os.kill(first, signal.SIGKILL)  # a crash
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if pid_on(BASE + 3) != first:
                    break
            except StopIteration:
                pass
            time.sleep(0.3)
        wait_ready(f"http://127.0.0.1:{BASE + 3}", 120, proc)
        assert pid_on(BASE + 3) != first
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "tts: exited with code" in out and "restart #1" in out and "tts: stopped" in out
    with pytest.raises(StopIteration):
        pid_on(BASE + 3)


def test_a_service_that_cannot_load_is_named_with_its_reason():
    proc = launch("--services", "stt", STT_MODEL="/nonexistent/model")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "stt: FAILED" in out and "nonexistent" in out
