"""Chat scheduling benchmark: time to first token and tokens/s per session when 1, 2 or 4
sessions talk to one chat service at once, serial (CHAT_PARALLEL=1: one sequence at a
time, the others queue, as the old engine's lock did) vs batched (CHAT_PARALLEL=4).

    python bench/chat_concurrency.py                       # starts the chat service itself
    python bench/chat_concurrency.py --turns 6 --json bench/results/chat_concurrency.json

Each session is a realistic voice session: an agent's system prompt from agents.json,
a short history that grows turn by turn with the replies, and a spoken-style user
sentence; after each reply it pauses 0-300 ms (seeded) before its next turn, so the
sessions' turns overlap without being in lockstep. Sampling as in production
(temperature from the settings, max_tokens 60).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = [
    "I was wondering what I could cook for dinner tonight with some rice and vegetables.",
    "Can you remind me why the sky looks blue during the day?",
    "My sister is visiting next weekend and I need ideas for what to do together.",
    "What is a good way to get better at remembering people's names?",
    "I just finished reading a book about the history of printing.",
    "Tell me something interesting about octopuses.",
    "How long should I let bread dough rise before baking it?",
    "I think I left my umbrella on the train this morning.",
]


def start(port: int, parallel: int) -> subprocess.Popen:
    env = {**os.environ, "CHAT_PORT": str(port), "CHAT_PARALLEL": str(parallel), "API_KEYS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "services.chat.app:app", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise TimeoutError("chat service not ready")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(20)


async def turn(http: httpx.AsyncClient, url: str, messages: list[dict]) -> tuple[float, float, int, str]:
    """(time to first token, tokens/s after it, deltas, reply)."""
    body = {"messages": messages, "stream": True, "end_of_turn": True, "max_tokens": 60}
    t0, first, n, text = time.perf_counter(), None, 0, []
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[5:]).get("choices", []):
                if delta := choice["delta"].get("content"):
                    first = first or time.perf_counter()
                    n += 1
                    text.append(delta)
    end = time.perf_counter()
    first = first or end
    return first - t0, (n - 1) / (end - first) if n > 1 and end > first else 0.0, n, "".join(text)


async def session(http: httpx.AsyncClient, url: str, system: str, rng: random.Random, turns: int) -> list[tuple]:
    history: list[dict] = [{"role": "system", "content": system},
                           {"role": "user", "content": "Hi, are you there?"},
                           {"role": "assistant", "content": "Oh, yes, I'm here. What can I do for you?"}]
    out = []
    for _ in range(turns):
        user = {"role": "user", "content": rng.choice(SENTENCES)}
        ttft, rate, n, reply = await turn(http, url, [*history, user])
        out.append((ttft, rate, n))
        history += [user, {"role": "assistant", "content": reply.strip() or "Okay."}]
        await asyncio.sleep(rng.uniform(0, 0.3))
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def prompt_tokens(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("s2s_chat_prompt_tokens_total{"):
            out[line.split('kind="')[1].split('"')[0]] = float(line.split()[-1])
    return out


async def measure(url: str, concurrency: int, turns: int, seed: int) -> dict:
    prompts = [a["systemPrompt"] for a in json.loads((ROOT / "agents.json").read_text())["agents"]]
    async with httpx.AsyncClient(timeout=120) as http:
        await turn(http, url, [{"role": "user", "content": "Hello."}])  # warm
        results = await asyncio.gather(*(session(http, url, prompts[i % len(prompts)], random.Random(seed + i), turns)
                                         for i in range(concurrency)))
    rows = [r for res in results for r in res]
    ttft, rates = [r[0] * 1000 for r in rows], [r[1] for r in rows if r[2] > 1]
    return {"sessions": concurrency, "turns": len(rows), "ttft_p50_ms": round(pct(ttft, 0.5)),
            "ttft_p90_ms": round(pct(ttft, 0.9)), "tokens_per_s_per_session": round(statistics.median(rates), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=int(os.environ.get("TEST_BASE_PORT", "22000")) + 12)
    ap.add_argument("--turns", type=int, default=5, help="turns per session")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    url, report = f"http://127.0.0.1:{args.port}", []
    for mode, parallel in (("serial", 1), ("batched", 4)):
        proc = start(args.port, parallel)
        try:
            for c in (1, 2, 4):
                row = {"mode": mode, **asyncio.run(measure(url, c, args.turns, args.seed))}
                report.append(row)
                print(json.dumps(row), flush=True)
            tokens = prompt_tokens(url)
            cached = tokens.get("cached", 0) / max(1.0, tokens.get("cached", 0) + tokens.get("decoded", 0))
            print(json.dumps({"mode": mode, "prompt_tokens": tokens, "cached_fraction": round(cached, 3)}), flush=True)
        finally:
            stop(proc)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
