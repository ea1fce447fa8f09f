"""The launcher: subsets, readiness, a clear failure, restart after a crash, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT, service_pid, system_env, wait_ready

BASE = 28000


def launch(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "launcher.py", "--combined-logs", *args], cwd=ROOT,
                            env={**system_env(BASE), **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def wait_line(proc: subprocess.Popen, text: str, timeout: float) -> list[str]:
    """Read the launcher's output until a line contains `text` (its own word, not a port)."""
    lines: list[str] = []
    deadline = time.time() + timeout
    assert proc.stdout is not None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("launcher exited:\n" + "".join(lines))
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no {text!r} after {timeout:.0f}s:\n" + "".join(lines))


def pid_on(port: int) -> int:
    return service_pid("tts", port)


def test_subset_restart_and_clean_stop():
    proc = launch("--services", "tts")
    seen: list[str] = []
    try:
        seen += wait_line(proc, "all ready", 120)  # the launcher itself has seen it ready
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
        seen += wait_line(proc, "tts: ready", 120)
        wait_ready(f"http://127.0.0.1:{BASE + 3}", 120, proc)
        assert pid_on(BASE + 3) != first
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    out = "".join(seen) + rest
    assert proc.returncode == 0
    assert "tts: exited with code" in out and "restart #1" in out and "tts: stopped" in out
    with pytest.raises(StopIteration):
        pid_on(BASE + 3)


def test_a_service_that_cannot_load_is_named_with_its_reason():
    proc = launch("--services", "stt", STT_MODEL="/nonexistent/model")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "stt: FAILED" in out and "nonexistent" in out
