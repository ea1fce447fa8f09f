"""What bench/load.py reports: CPU of the service processes, per-level statistics, verdicts.

CPU is read from /proc/<pid>/stat (utime + stime of the process and its descendants)
at the start and end of a level: % of one core over the level's wall time. A service
is found by its listening port (/proc/net/tcp*), so it works for a system started
by anyone.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load_client import SessionResult

TICK = os.sysconf("SC_CLK_TCK")
PATIENT_MS = 1000.0  # confirmed later than this after the end of speech: the turn waited for unfinished words
STAGES = ("created", "stt", "end_of_turn", "first_token", "first_chunk", "confirmed", "first_tts_audio", "first_audio_sent")


def pid_on_port(port: int) -> int | None:
    """The process listening on 127.0.0.1/0.0.0.0 `port` (None if none of ours)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                return int(pid)
        except OSError:
            continue
    return None


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(root: int, tree: bool = True) -> float:
    """CPU time of `root` and (with `tree`) all its descendants."""
    total = 0
    for pid in _tree(root) if tree else [root]:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])  # utime, stime (fields 14 and 15)
    return total / TICK


def machine_seconds() -> float:
    """Busy CPU time of the whole machine, all cores (/proc/stat: all but idle and iowait)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / TICK


class CpuMeter:
    """CPU % of one core per named process between start() and stop(); `own` is measured
    without its descendants (the bench client, whose children may be the services), and
    `machine` is everything that ran, ours or not (2 cores: at most 200%)."""

    def __init__(self, pids: dict[str, int], own: int) -> None:
        self.pids, self.own = pids, own
        self._t0 = 0.0
        self._c0: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        return {**{n: cpu_seconds(p) for n, p in self.pids.items()}, "bench client": cpu_seconds(self.own, tree=False),
                "machine": machine_seconds()}

    def start(self, now: float) -> None:
        self._t0, self._c0 = now, self._read()

    def stop(self, now: float) -> dict[str, float]:
        wall = max(now - self._t0, 1e-9)
        return {n: round(100 * (c - self._c0[n]) / wall, 1) for n, c in self._read().items()}


def pct(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (as bench/latency.py)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else None


@dataclass
class Level:
    """One load level: `sessions` users at once."""

    sessions: int
    results: list[SessionResult]
    cpu: dict[str, float]
    wall_s: float
    stage: str = "first_audio_sent"  # the server-side stage reported beside the client's latency
    summary: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        admitted = [r for r in self.results if r.admitted]
        turns = [t for r in admitted for t in r.turns]
        lat = [t.latency * 1000 for t in turns if t.latency is not None]
        server = [t.stages[self.stage] for t in turns if t.latency is not None and self.stage in t.stages]
        refused = [r for r in self.results if r.refused_after is not None]
        # told: the first word a session got that the server was full (its place in the queue, or a refusal)
        told = [r.queued_after if r.queued_after is not None else r.refused_after for r in self.results
                if r.queued_after is not None or r.refused_after is not None]
        waited = [r.waited for r in self.results if r.waited is not None]
        # turns whose words read unfinished wait for more (up to SERVER_UNFINISHED_MAX_SILENCE): policy, not load
        patient = [t.stages.get("confirmed", 0) > PATIENT_MS for t in turns if t.latency is not None]
        prompt = [x for x, waited in zip(lat, patient, strict=True) if not waited]
        self.summary = {
            "sessions": self.sessions, "admitted": len(admitted), "refused": len(refused),
            "queued": sum(r.queued is not None for r in self.results), "told": len(told),
            "told_max_s": round(max(told), 3) if told else None,
            "queue_wait_max_s": round(max(waited), 1) if waited else None,
            "refusals": sorted({f"{r.refused}/{r.close_code}" for r in self.results if r.refused}),  # code/close code
            "errors": sorted({r.error for r in self.results if r.error}),
            "turns": len(turns), "answered": len(lat), "dropped": len(turns) - len(lat), "early": sum(t.early for t in turns),
            "p50_ms": _r(pct(lat, 0.5)), "p90_ms": _r(pct(lat, 0.9)), "p95_ms": _r(pct(lat, 0.95)),
            "max_ms": _r(max(lat) if lat else None),
            "waited_unfinished": sum(patient), "p90_ms_others": _r(pct(prompt, 0.9)),
            f"server_{self.stage}_p50_ms": _r(pct(server, 0.5)), f"server_{self.stage}_p95_ms": _r(pct(server, 0.95)),
            "audio_s_mean": round(statistics.mean(t.audio_s for t in turns if t.latency is not None), 2) if lat else None,
            "cpu_pct": self.cpu, "wall_s": round(self.wall_s, 1),
            "stages_p50_ms": {k: _r(pct([t.stages[k] for t in turns if k in t.stages], 0.5)) for k in STAGES},
        }

    def row(self) -> str:
        s = self.summary
        cpu = " ".join(f"{k} {v:.0f}%" for k, v in self.cpu.items())
        return (f"{s['sessions']:>4} {s['admitted']:>4} {s['queued']:>4} {s['refused']:>4} {s['turns']:>5} {s['answered']:>5} {s['dropped']:>4} "
                f"{_f(s['p50_ms'])} {_f(s['p90_ms'])} {_f(s['p95_ms'])} {_f(s['max_ms'])}  {cpu}")


HEADER = "   N  adm  que  ref turns  ans  drop    p50    p90    p95    max  CPU (% of one core)"


def verdict_real(level: Level, cap: int) -> str:
    """Issue 11's targets: up to 4 sessions p90 ≤ 1.0 s and none dropped; beyond the cap the
    admitted keep p90 ≤ 1.5 s and the others are told (queued or refused at once), not stalled."""
    s = level.summary
    p90, dropped, told = s["p90_ms"], s["dropped"], s["told_max_s"]
    if level.sessions <= cap:
        ok = p90 is not None and p90 <= 1000 and dropped == 0 and s["told"] == 0
        return (f"N={level.sessions}: target p90 <= 1000 ms, 0 dropped: p90 {_f(p90).strip()} ms, {dropped} dropped -> "
                f"{'PASS' if ok else 'FAIL'} ({s['waited_unfinished']} turns waited for unfinished words; "
                f"p90 of the others {_f(s['p90_ms_others']).strip()} ms)")
    ok = p90 is not None and p90 <= 1500 and dropped == 0 and (told is None or told <= 2.0) and not s["errors"]
    return (f"N={level.sessions}: target admitted p90 <= 1500 ms, 0 dropped, the rest told: {s['admitted']} admitted, "
            f"p90 {_f(p90).strip()} ms, {dropped} dropped, {s['told']} told ({s['queued']} queued, {s['refused']} refused) within "
            f"{told if told is not None else '-'} s "
            f"-> {'PASS' if ok else 'FAIL'}")


def verdict_standins(level: Level) -> str:
    s = level.summary
    p95, dropped = s["p95_ms"], s["dropped"]
    ok = p95 is not None and p95 <= 20 and dropped == 0 and s["refused"] == 0
    return (f"stand-ins N={level.sessions}: target 0 dropped, server overhead p95 <= 20 ms: {dropped} dropped, "
            f"{s['refused']} refused, p95 {_f(p95).strip()} ms -> {'PASS' if ok else 'FAIL'}")


def _r(x: float | None) -> float | None:
    return round(x, 1) if x is not None else None


def _f(x: object) -> str:
    return f"{x:6.0f}" if isinstance(x, int | float) else "     -"
