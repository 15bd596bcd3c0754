"""Soak test of `numallm serve`: minutes of mixed load with disconnects; errors and RSS.

    python3 benchmarks/serve_soak.py [--minutes 10] [--clients 6] [--parallel 4] [--model smollm2]

Client threads loop until the time is up, each request drawn at random (fixed seed):
chat or completion, streamed or not, 4-96 tokens, greedy or sampled with a seed,
sometimes a stop string; 15% of streams are dropped after a few pieces and 5% of the
whole requests after a moment (the server must cancel them), 5% of requests are
provoked errors (malformed JSON, a bad field, an over-long prompt) that must get a 400.
Anything else than 200 for a good request, 400 for a bad one, or a stream that ends
without [DONE], is an error. Every 10 s: the server's RSS and thread count, and its
active sequences. At the end a summary; exit status 1 if there was any error, if RSS
grew more than --rss-slack-mb between the end of the warm-up (first minute) and the end,
or if a sequence is still active at the end. The thread count is shown, not judged: the
server's thread pool (tokenizing off the event loop) grows and shrinks with load.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import random
import sys
import threading
import time
from pathlib import Path

from serve import free_port, launched, numallm_cmd  # benchmarks/serve.py

from numallm.engine.model_store import resolve_model

CTX = 512
WORDS = ["the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as",
         "with", "his", "they", "at", "be", "this", "from"]


def _proc_status(pid: int) -> tuple[int, int]:
    """(RSS bytes, threads) of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["Threads"])


class Soak:
    def __init__(self, port: int, seconds: float, seed: int) -> None:
        self.port = port
        self.deadline = time.monotonic() + seconds
        self.seed = seed
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def count(self, outcome: str, error: str | None = None) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            if error is not None:
                self.errors.append(error)

    def client(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        while time.monotonic() < self.deadline:
            try:
                self.one(rng)
            except Exception as e:
                self.count("exception", f"{type(e).__name__}: {e}")

    def one(self, rng: random.Random) -> None:
        chat, stream = rng.random() < 0.5, rng.random() < 0.6
        body: dict = {"max_tokens": rng.randint(4, 96), "stream": stream}
        if rng.random() < 0.5:
            body.update(temperature=0)
        else:
            body.update(temperature=round(rng.uniform(0.3, 1.2), 2), seed=rng.randrange(1 << 31))
        if rng.random() < 0.2:
            body["stop"] = [rng.choice(WORDS), "\n\n"]
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))
        if chat:
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        path = "/v1/chat/completions" if chat else "/v1/completions"
        roll = rng.random()
        if roll < 0.05:
            self.provoked(rng, path, body)
        elif stream:
            self.streamed(path, body, drop_after=rng.randint(1, 5) if roll < 0.2 else None)
        else:
            self.whole(path, body, drop=roll < 0.1)

    def connect(self, path: str, raw: bytes) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        conn.request("POST", path, raw, {"Content-Type": "application/json"})
        return conn

    def provoked(self, rng: random.Random, path: str, body: dict) -> None:
        kind = rng.choice(["json", "field", "long"])
        if kind == "json":
            raw = json.dumps(body).encode()[:-3]
        elif kind == "field":
            raw = json.dumps({**body, "temperature": rng.choice([-1, 99, "hot"])}).encode()
        else:
            long = " ".join(rng.choice(WORDS) for _ in range(CTX * 2))
            raw = json.dumps({**body, "prompt": long, "messages": [{"role": "user", "content": long}]}).encode()
        conn = self.connect(path, raw)
        resp = conn.getresponse()
        reply = resp.read()
        conn.close()
        ok = resp.status == 400 and "error" in json.loads(reply)
        self.count("provoked 400" if ok else "error",
                   None if ok else f"provoked {kind}: HTTP {resp.status} {reply[:200]!r}")

    def streamed(self, path: str, body: dict, drop_after: int | None) -> None:
        conn = self.connect(path, json.dumps(body).encode())
        resp = conn.getresponse()
        if resp.status != 200:
            self.count("error", f"stream: HTTP {resp.status} {resp.read()[:200]!r}")
            conn.close()
            return
        pieces = 0
        for line in resp:
            if line.strip() == b"data: [DONE]":
                conn.close()
                self.count("stream")
                return
            if line.startswith(b"data: "):
                if b'"error"' in line[:20]:
                    self.count("error", f"stream error event: {line[:200]!r}")
                    conn.close()
                    return
                pieces += 1
                if drop_after is not None and pieces >= drop_after:
                    conn.close()  # the client goes away mid-stream
                    self.count("stream dropped")
                    return
        conn.close()
        self.count("error", "stream ended without [DONE]")

    def whole(self, path: str, body: dict, drop: bool) -> None:
        conn = self.connect(path, json.dumps(body).encode())
        if drop:
            time.sleep(0.05)
            conn.close()
            self.count("whole dropped")
            return
        resp = conn.getresponse()
        reply = resp.read()
        conn.close()
        if resp.status == 200 and json.loads(reply)["usage"]["completion_tokens"] >= 0:
            self.count("whole")
        else:
            self.count("error", f"whole: HTTP {resp.status} {reply[:200]!r}")


def _metric(port: int, name: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rss-slack-mb", type=float, default=16)
    args = ap.parse_args()
    port = free_port()
    seconds = args.minutes * 60
    samples: list[tuple[float, int, int, float]] = []  # (t, rss, threads, active)
    with launched(numallm_cmd(resolve_model(args.model), port, args.threads, args.parallel, CTX), port, "/health",
                  Path("/tmp/serve-soak.log")) as proc:
        soak = Soak(port, seconds, args.seed)
        clients = [threading.Thread(target=soak.client, args=(i,)) for i in range(args.clients)]
        t0 = time.monotonic()
        for c in clients:
            c.start()
        while any(c.is_alive() for c in clients):
            rss, threads = _proc_status(proc.pid)
            samples.append((time.monotonic() - t0, rss, threads, _metric(port, "numallm_active_sequences")))
            print(f"{samples[-1][0]:6.0f} s  RSS {rss / 2**20:7.1f} MiB  threads {threads}  "
                  f"active {samples[-1][3]:.0f}  {dict(soak.outcomes)}", flush=True)
            time.sleep(10)
        for c in clients:
            c.join()
        time.sleep(1)
        rss, threads = _proc_status(proc.pid)
        samples.append((time.monotonic() - t0, rss, threads, _metric(port, "numallm_active_sequences")))
        generated = _metric(port, "numallm_generated_tokens_total")
    warm = next((s for s in samples if s[0] >= 60), samples[0])
    growth = (samples[-1][1] - warm[1]) / 2**20
    print(f"\n{sum(soak.outcomes.values())} requests in {samples[-1][0]:.0f} s: {dict(soak.outcomes)}; "
          f"{generated:.0f} tokens generated")
    print(f"RSS after warm-up ({warm[0]:.0f} s) {warm[1] / 2**20:.1f} MiB, at the end {samples[-1][1] / 2**20:.1f} MiB "
          f"({growth:+.1f} MiB), max {max(s[1] for s in samples) / 2**20:.1f} MiB; threads "
          f"{min(s[2] for s in samples)}-{max(s[2] for s in samples)}; "
          f"active sequences at the end {samples[-1][3]:.0f}")
    for e in soak.errors[:20]:
        print(f"error: {e}")
    bad = bool(soak.errors) or growth > args.rss_slack_mb or samples[-1][3] != 0
    print("FAIL" if bad else "OK")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
