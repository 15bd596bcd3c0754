"""Pipeline benchmark (`--pipeline`, cluster/): what a hop between stages costs, and the
aggregate decode rate of concurrent streams through 2 stages of 1 thread each against one
process of 2 threads, in the same run on a local Ray cluster.

    python3 benchmarks/pipeline.py [--model smollm2|PATH] [--streams 8] [-n 64] [--rounds 2]

- hop: a call through a chain of k echo actors, k = 1 and 3, carrying what a decode
  step of --streams tokens carries (int32 tokens, slots, positions, rows and float32
  hidden states [streams, n_embd]); a hop is (t3 - t1) / 2, the driver's round trip is
  t1. Of 300 calls each, the two chains alternating: medians, and minimums (what a hop
  costs when nothing else runs). Through chained actor calls (the pipeline's way) and
  through a Ray Compiled Graph (the way it does not take: benchmarks/README.md).
- streams: the batching scheduler (what `numallm serve` runs) with --streams greedy
  requests of -n tokens each (ignore_eos, short prompts), on Engine(threads=2) and on
  the pipeline; aggregate t/s = tokens of all streams / wall time from the first
  submit to the last token. Each round measures both; the best round of each counts.
  The ratio pipeline / one process is the issue's figure (target >= 0.8), of the best
  rounds and within each round (the same load for both).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
import ray
from ray.dag import InputNode

from numallm.cluster import open_engine
from numallm.cluster.stage import Step
from numallm.engine.batching import BatchScheduler, Job, Update
from numallm.engine.sampling import SamplingParams

PROMPTS = ["Write a long story about a dragon.", "Explain how a steam engine works.",
           "Describe the Roman Empire.", "A recipe for sourdough bread:", "The planets of the solar system are",
           "How does the internet route a packet?", "Dear friend, our trip to the mountains", "Photosynthesis is"]


@ray.remote(num_cpus=0)
class Echo:
    def ready(self) -> None:
        pass

    def step(self, s: Step) -> Step:
        return s


def hop_latency(n_tokens: int, n_embd: int, compiled: bool, runs: int = 300) -> dict[str, float]:
    """A hop's cost and the driver's round trip through one actor (seconds; median and
    minimum) and the bytes a hop carries, through chained actor calls (what the pipeline
    uses) or a Compiled Graph. The chains of 1 and 3 actors run alternately, so that
    both see the same load."""
    ints = np.arange(n_tokens, dtype=np.int32)
    step = Step(ints, ints, ints, ints, False, np.zeros((n_tokens, n_embd), np.float32))
    chains, calls = [], []
    for k in (1, 3):
        chains.append([Echo.remote() for _ in range(k)])
        ray.get([a.ready.remote() for a in chains[-1]])  # started (a new process each), before timing
        if compiled:
            with InputNode() as inp:
                out = inp
                for a in chains[-1]:
                    out = a.step.bind(out)
            dag = out.experimental_compile()
            calls.append((lambda dag=dag: dag.execute(step).get(timeout=60), dag))
        else:
            def chained(chain: list = chains[-1]) -> Step:
                ref = step
                for a in chain:
                    ref = a.step.remote(ref)
                return ray.get(ref)
            calls.append((chained, None))
    times: list[list[float]] = [[], []]
    for i in range(runs + 50):
        for (call, _), ts in zip(calls, times):
            t0 = time.perf_counter()
            call()
            if i >= 50:
                ts.append(time.perf_counter() - t0)
    for (_, dag), chain in zip(calls, chains):
        if dag is not None:
            dag.teardown()
        for a in chain:
            ray.kill(a)
    one, three = times
    return {"bytes": 4 * 4 * n_tokens + step.states.nbytes,
            "trip_median": statistics.median(one), "trip_min": min(one),
            "hop_median": (statistics.median(three) - statistics.median(one)) / 2,
            "hop_min": (min(three) - min(one)) / 2}


def streams_rate(engine: object, n_streams: int, n_gen: int) -> float:
    """Aggregate generated tokens per second of n_streams greedy requests run together."""
    sched = BatchScheduler(engine)
    done = threading.Semaphore(0)
    counts = [0] * n_streams

    def emit(i: int, u: Update) -> None:
        counts[i] = u.n_generated
        if u.done:
            assert u.finish_reason == "length", u
            done.release()

    params = SamplingParams(temperature=0.0)
    jobs = [Job(engine.tokenize(PROMPTS[i % len(PROMPTS)]), params, n_gen, (), lambda u, i=i: emit(i, u),
                ignore_eos=True) for i in range(n_streams)]
    t0 = time.perf_counter()
    for j in jobs:
        sched.submit(j)
    for _ in jobs:
        done.acquire()
    elapsed = time.perf_counter() - t0
    sched.close()
    return sum(counts) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("-n", type=int, default=64, help="tokens per stream")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    print(f"CPU: {cpu}; load average before: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    kw = dict(model=args.model, ctx_size=256, n_slots=args.streams)
    with open_engine(1, threads=2, **kw) as one, open_engine(2, threads=1, **kw) as pipe:
        print(f"stages: {pipe.stage_layers}, workers' CPUs {[w['cpus'] for w in pipe.where]}")
        for compiled in (False, True):
            h = hop_latency(args.streams, one.hparams.n_embd, compiled)
            print(f"hop, {'Compiled Graph' if compiled else 'actor calls (the pipeline)'} ({h['bytes']} bytes: "
                  f"{args.streams} tokens' ids and hidden states): median {h['hop_median'] * 1e6:.0f} us, minimum "
                  f"{h['hop_min'] * 1e6:.0f} us; the driver's round trip through one actor: median "
                  f"{h['trip_median'] * 1e6:.0f} us, minimum {h['trip_min'] * 1e6:.0f} us")
        rates: dict[str, list[float]] = {"one process, 2 threads": [], "2 stages x 1 thread": []}
        for r in range(args.rounds):
            for (name, eng) in zip(rates, (one, pipe)):
                rates[name].append(streams_rate(eng, args.streams, args.n))
                print(f"round {r + 1}: {name}: {rates[name][-1]:.1f} t/s aggregate")
        best = {k: max(v) for k, v in rates.items()}
        a, b = best.values()
        paired = [p / o for o, p in zip(*rates.values())]
        print(f"{args.streams} streams x {args.n} tokens, best of {args.rounds}: one process {a:.1f} t/s, "
              f"pipeline {b:.1f} t/s, ratio {b / a:.2f} (target >= 0.8); ratio within each round "
              f"{', '.join(f'{r:.2f}' for r in paired)} (median {statistics.median(paired):.2f}); "
              f"load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
