"""Shared fixtures. `system` starts the four real services with the launcher on test
ports (so a running dev system does not interfere) and stops them afterwards."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shared.audio import rms_dbfs
from tests.chat_tap import ChatTap

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
# audio (s) that proves a turn was spoken: replies are sampled, and the shortest ("Okay.") is ~0.44 s
SPOKEN = 0.3
OUTPUT = ROOT / "test-output"
BASE_PORT = int(os.environ.get("TEST_BASE_PORT", "18000"))


@dataclass(frozen=True)
class Clip:
    id: str
    transcript: str
    audio: np.ndarray  # int16, 16 kHz mono

    @property
    def path(self) -> Path:
        return CORPUS / "wav" / f"{self.id}.wav"


def load_corpus() -> list[Clip]:
    with open(CORPUS / "manifest.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    out = []
    for r in rows:
        audio, rate = sf.read(CORPUS / "wav" / f"{r['id']}.wav", dtype="int16")
        assert rate == 16000
        out.append(Clip(r["id"], r["transcript"], audio))
    return out


@pytest.fixture(scope="session")
def corpus() -> list[Clip]:
    return load_corpus()


@dataclass(frozen=True)
class System:
    server: str
    stt: str
    chat: str
    tts: str
    log: Path
    chat_tap: ChatTap  # what the session server sent to chat

    @property
    def ws(self) -> str:
        return self.server.replace("http://", "ws://") + "/ws/"


def system_env(base: int, chat_url: str | None = None) -> dict[str, str]:
    p = {name: base + i for i, name in enumerate(("server", "stt", "chat", "tts"))}
    return {
        **os.environ,
        "SERVER_PORT": str(p["server"]),
        "STT_PORT": str(p["stt"]),
        "CHAT_PORT": str(p["chat"]),
        "TTS_PORT": str(p["tts"]),
        "SERVER_STT_URL": f"http://127.0.0.1:{p['stt']}",
        "SERVER_CHAT_URL": chat_url or f"http://127.0.0.1:{p['chat']}",
        "SERVER_TTS_URL": f"ws://127.0.0.1:{p['tts']}/tts/stream",
    }


def wait_ready(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


def start_system(env: dict[str, str], log: Path, timeout: float = 240) -> tuple[subprocess.Popen, dict[str, str]]:
    """Run launcher.py with `env` (see system_env) until all four services are ready."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "launcher.py", "--combined-logs"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    urls = {n: f"http://127.0.0.1:{env[f'{n.upper()}_PORT']}" for n in ("server", "stt", "chat", "tts")}
    try:
        for url in urls.values():
            wait_ready(url, timeout, proc)
    except BaseException:
        stop_system(proc)
        raise
    return proc, urls


def stop_system(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def with_pause(pcm: np.ndarray, pause: float) -> tuple[np.ndarray, float]:
    """The clip with its quietest gap in the middle third (a pause between words, whatever
    the reader left there) replaced by exactly `pause` seconds of silence; and where."""
    x = pcm.astype(np.float32) / 32768
    hop = 160
    e = 10 * np.log10(np.array([np.mean(x[i : i + hop] ** 2) for i in range(0, len(x) - hop, hop)]) + 1e-12)
    lo, hi = len(e) // 3, 2 * len(e) // 3
    mid = lo + int(np.argmin(e[lo:hi]))
    quiet = e.max() - 35
    a, b = mid, mid
    while a > 0 and e[a - 1] < quiet:
        a -= 1
    while b < len(e) - 1 and e[b + 1] < quiet:
        b += 1
    gap = np.zeros(int(pause * 16000), np.int16)
    return np.concatenate([pcm[: a * hop], gap, pcm[(b + 1) * hop :]]), a * hop / 16000


def service_pid(name: str, port: int) -> int:
    """The process of service `name` that the launcher started for `port` (StopIteration if none)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"shared.serve" in args and name.encode() in args and f"{name.upper()}_PORT={port}".encode() in env:
            return int(pid)
    raise StopIteration


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def trimmed(pcm: np.ndarray, drop_db: float = 35.0) -> np.ndarray:
    """The clip without its leading and trailing silence (10 ms hops within `drop_db` of the peak)."""
    x = pcm.astype(np.float32) / 32768
    hop = 160
    e = 10 * np.log10(np.array([np.mean(x[i : i + hop] ** 2) for i in range(0, len(x) - hop, hop)]) + 1e-12)
    voiced = np.nonzero(e > e.max() - drop_db)[0]
    return pcm[voiced[0] * hop : (voiced[-1] + 1) * hop]


def at_level(pcm: np.ndarray, dbfs: float) -> np.ndarray:
    """The clip scaled to `dbfs` RMS: one speaker's utterances at one speaking level, whatever
    level each corpus recording happens to have (they differ by up to ~10 dB)."""
    x = pcm.astype(np.float32) / 32768
    return (x * 10 ** ((dbfs - rms_dbfs(x)) / 20) * 32767).clip(-32768, 32767).astype(np.int16)


def babble(corpus: list[Clip], exclude_speaker: str, seconds: float, rms: float) -> np.ndarray:
    """Other people talking: six other speakers' clips looped and summed, at `rms` (float scale)."""
    others = [c for c in corpus if c.id.split("-")[0] != exclude_speaker][:6]
    n = int(seconds * 16000)
    out = np.zeros(n, np.float32)
    for k, o in enumerate(others):
        x = np.tile(o.audio.astype(np.float32) / 32768, n // len(o.audio) + 2)
        off = (k * 7919) % len(o.audio)
        out += x[off : off + n]
    return out * rms / np.sqrt(np.mean(out**2) + 1e-12)


@pytest.fixture(scope="session")
def system() -> Iterator[System]:
    tap = ChatTap(f"http://127.0.0.1:{BASE_PORT + 2}", BASE_PORT + 10).start()
    log = OUTPUT / "launcher.log"
    proc, urls = start_system(system_env(BASE_PORT, chat_url=tap.url), log)
    try:
        yield System(**urls, log=log, chat_tap=tap)
    finally:
        tap.stop()
        stop_system(proc)
