"""Process supervisor: starts any subset of the services, waits until each is ready,
restarts a crashed one with backoff, and stops them all in reverse order.

    python launcher.py                                   # server, stt, chat, tts
    python launcher.py --services server chat tts        # a subset
    python launcher.py --combined-logs                   # every service's lines here, prefixed

Without --combined-logs each service writes to logs/<name>.log and only the launcher's
own status lines are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ORDER = ("stt", "chat", "tts", "server")  # start order; stopped in reverse
sys.path.insert(0, str(ROOT))


def _port(name: str) -> tuple[str, int]:
    """Where a service listens, from its own settings class (environment and .env)."""
    from shared import config

    cls = {"stt": config.SttSettings, "chat": config.ChatSettings, "tts": config.TtsSettings, "server": config.ServerSettings}[name]
    s = cls()
    return s.host, s.port


def say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [launcher] {msg}", flush=True)


@dataclass
class Service:
    name: str
    combined: bool
    ready_timeout: float
    proc: asyncio.subprocess.Process | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    restarts: int = 0
    stopping: bool = False

    @cached_property  # read once: the readiness poll asks for it every 300 ms
    def url(self) -> str:
        host, port = _port(self.name)
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"

    async def start(self) -> None:
        host, port = _port(self.name)
        cmd = [sys.executable, "-m", "shared.serve", self.name]  # uvicorn, with a drain on SIGTERM
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True, limit=2**20,
        )
        asyncio.create_task(self._pump(self.proc))
        say(f"{self.name}: started (pid {self.proc.pid}) on {host}:{port}")

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        log = None if self.combined else open(ROOT / "logs" / f"{self.name}.log", "a", buffering=1)  # noqa: SIM115, ASYNC230 - line-buffered local file
        try:
            while raw := await _readline(proc.stdout):
                line = raw.decode(errors="replace").rstrip()
                self.tail.append(line)
                if log:
                    log.write(line + "\n")
                else:
                    print(f"[{self.name:>6}] {line}", flush=True)
        finally:
            if log:
                log.close()

    async def bring_up(self, attempts: int = 3) -> bool:
        """Start-up: a process that dies before it is ready is restarted like any crash
        (a few times); a service that reports its models failed to load is not."""
        for attempt in range(1, attempts + 1):
            outcome = await self.wait_ready()
            if outcome != "crashed":
                return outcome == "ready"
            if attempt < attempts and not self.stopping:
                self.restarts += 1
                say(f"{self.name}: exited during start-up; restart #{self.restarts} in {attempt}s")
                await asyncio.sleep(attempt)
                await self.start()
        say(f"{self.name}: FAILED: it kept exiting during start-up")
        return False

    async def wait_ready(self) -> str:
        """"ready", "crashed" (the process exited) or "failed" (load error or timeout)."""
        t0, last_note = time.monotonic(), 0.0
        while time.monotonic() - t0 < self.ready_timeout:
            if self.proc is None or self.proc.returncode is not None:
                await asyncio.sleep(0.2)  # let the pump collect the last lines
                say(f"{self.name}: exited before it was ready (exit code {self.proc.returncode if self.proc else '?'}). Last output:")
                for line in list(self.tail)[-10:]:
                    print(f"    {line}", flush=True)
                return "crashed"
            status, reason = await asyncio.to_thread(_ready, self.url)
            if status is None:
                say(f"{self.name}: FAILED to load: {reason}")
                return "failed"
            if status:
                say(f"{self.name}: ready ({time.monotonic() - t0:.1f}s) at {self.url}")
                return "ready"
            if time.monotonic() - last_note > 10:
                last_note = time.monotonic()
                if time.monotonic() - t0 > 1:
                    say(f"{self.name}: waiting ({reason}) {time.monotonic() - t0:.0f}s")
            await asyncio.sleep(0.3)
        say(f"{self.name}: FAILED: not ready after {self.ready_timeout:.0f}s")
        return "failed"

    async def stop(self, timeout: float) -> None:
        """SIGTERM (the service drains: turns in flight finish), then SIGKILL after `timeout`."""
        self.stopping = True
        p = self.proc
        if p is None or p.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(p.wait(), timeout)
        except TimeoutError:
            say(f"{self.name}: did not stop in {timeout:.0f}s, killing")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            await p.wait()
        say(f"{self.name}: stopped")

    async def supervise(self) -> None:
        """Restart on crash with exponential backoff (reset after a minute of good health)."""
        backoff = 1.0
        while not self.stopping:
            assert self.proc is not None
            started = time.monotonic()
            code = await self.proc.wait()
            if self.stopping:
                return
            if time.monotonic() - started > 60:
                backoff = 1.0
            self.restarts += 1
            say(f"{self.name}: exited with code {code}; restart #{self.restarts} in {backoff:.0f}s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            if self.stopping:
                return
            await self.start()
            await self.bring_up()


async def _readline(stream: asyncio.StreamReader) -> bytes:
    """A line, or a 1 MiB piece of an endless one: the pipe must keep draining or the service blocks."""
    try:
        return await stream.readline()
    except ValueError:
        return await stream.read(2**20)


def _ready(url: str) -> tuple[bool | None, str]:
    """(True, _) ready; (False, why) not yet; (None, why) its models failed to load."""
    try:
        with urllib.request.urlopen(url + "/ready", timeout=2) as r:
            return r.status == 200, "ready"
    except urllib.error.HTTPError as e:
        try:
            error = json.loads(e.read()).get("error", "")
        except ValueError:
            error = ""
        if e.code == 503 and error and error != "loading":
            return None, error
        return False, "loading models" if e.code == 503 else f"HTTP {e.code}"
    except OSError:
        return False, "starting"


async def main(args: argparse.Namespace) -> int:
    (ROOT / "logs").mkdir(exist_ok=True)
    names = [n for n in ORDER if n in args.services]
    services = [Service(n, args.combined_logs, args.ready_timeout) for n in names]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if not args.combined_logs:
        say(f"service output goes to {ROOT / 'logs'}/<name>.log (use --combined-logs to see it here)")
    try:
        for s in services:  # model services load in parallel; the server needs nothing to start
            await s.start()
        waiting = asyncio.gather(*(s.bring_up() for s in services))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([waiting, stopped], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            say("stopping before everything was ready")
            waiting.cancel()
            return 130
        ready = waiting.result()
        if not all(ready):
            failed = ", ".join(s.name for s, ok in zip(services, ready, strict=True) if not ok)
            say(f"not starting up: {failed} failed (see above). Stopping the rest.")
            return 1
        if "server" in names:
            say(f"all ready. Open {services[-1].url}/ in a browser, or connect to ws://HOST:{_port('server')[1]}/ws/<session_id>")
        else:
            say("all ready.")
        watchers = [asyncio.create_task(s.supervise()) for s in services]
        await stop.wait()
        say("stopping")
        for w in watchers:
            w.cancel()
    finally:
        from shared.config import common

        for s in reversed(services):  # the server first: it drains its sessions while the models still answer
            await s.stop(common().drain_timeout + 10)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", nargs="+", choices=ORDER, default=list(ORDER), metavar="NAME",
                    help=f"which to run, any of: {' '.join(ORDER)} (default: all)")
    ap.add_argument("--combined-logs", action="store_true", help="print every service's output here, prefixed with its name")
    ap.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for each service's /ready")
    return ap.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
