"""What the default model's forward pass compiles, so that install.sh's warm-up can
compile it in two processes: the cached Numba functions it calls, each with the
signature it calls it with, the seconds its compile took, and its group, in
compile_plan.json. Entries that compile a function in common (the same tile kernels,
say) are one group, which one process compiles: split, each would compile it.

The warm-up compiles some of them in a second process (its own Numba cache, merged
into this one afterwards: numallm.kernels.numba_cache.merge_cache) and the others
itself, then the forward pass, which finds them all cached. A stale plan costs time,
never correctness: what it lacks the forward pass compiles as before.
tests/test_compile_split.py says when to record it again:

    python3 scripts/compile_plan.py   # a cold compile, then each entry's alone: ~2 min
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLAN = Path(__file__).resolve().with_name("compile_plan.json")
_ROOT = "numallm.engine.forward:forward"  # whose callees are split


@dataclass(frozen=True)
class Entry:
    function: str  # module:qualname
    signature: str  # pickled argument types, base64
    seconds: float
    group: int

    def compile(self) -> None:
        """Compile (or load from the cache) this function for this signature."""
        _resolve(self.function).compile(pickle.loads(base64.b64decode(self.signature)))


def _resolve(function: str) -> Any:
    """module:qualname's object."""
    module, qualname = function.split(":")
    found: Any = importlib.import_module(module)
    for name in qualname.split("."):
        found = getattr(found, name)
    return found


def compile_all(entries: list[Entry]) -> None:
    """Compile these entries; one that no longer compiles (a stale plan) is reported in a
    line and left to the forward pass's compile."""
    for entry in entries:
        try:
            entry.compile()
        except ModuleNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001  # a renamed function, a changed signature
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            print(f"warm-up: {entry.function} no longer compiles as {PLAN.name} says ({first}); "
                  f"record it again: python3 scripts/compile_plan.py", file=sys.stderr)


def load() -> tuple[float, list[Entry]]:
    """The recorded plan: the repacking kernels' compile seconds, and the entries."""
    plan = json.loads(PLAN.read_text())
    entries = [Entry(e["function"], e["signature"], e["seconds"], e["group"]) for e in plan["functions"]]
    return plan["repacking_seconds"], entries


def split(head_start: float, entries: list[Entry], other_start: float = 1.0) -> tuple[list[int], list[int]]:
    """Which entries (their indices) this process compiles, having first spent
    `head_start` on other work, and which the other, having first spent `other_start`
    starting: whole groups, the longest first, each to whichever of the two is free sooner."""
    groups: dict[int, list[int]] = {}
    for i, entry in enumerate(entries):
        groups.setdefault(entry.group, []).append(i)
    sides: tuple[list[int], list[int]] = ([], [])
    busy = [head_start, other_start]
    for group in sorted(groups.values(), key=lambda g: -sum(entries[i].seconds for i in g)):
        side = 0 if busy[0] <= busy[1] else 1
        sides[side].extend(group)
        busy[side] += sum(entries[i].seconds for i in group)
    return sides


def listen(on_start: Callable[[], Any], on_end: Callable[[Any, Any, float, int], None]) -> None:
    """At the end of each Numba compile in this process, call on_end(the event, what
    on_start returned as it started, its thread seconds, how many compiles enclose it)."""
    from numba.core import event

    stack = threading.local()

    class Listener(event.Listener):  # type: ignore[misc]
        def on_start(self, ev: Any) -> None:
            stack.__dict__.setdefault("frames", []).append((time.thread_time(), on_start()))

        def on_end(self, ev: Any) -> None:
            started, noted = stack.frames.pop()
            on_end(ev, noted, time.thread_time() - started, len(stack.frames))

    event.register("numba:compile", Listener())


def is_cached(ev: Any) -> bool:
    """Whether the compiled function is one Numba caches on disk."""
    from numba.core import caching

    return isinstance(ev.data["dispatcher"]._cache, caching.FunctionCache)


def name_of(ev: Any) -> str:
    """The compiled function as module:qualname."""
    func = ev.data["dispatcher"].py_func
    return f"{func.__module__}:{func.__qualname__}"


def record() -> dict[str, Any]:
    """A cold compile of the default model, as the warm-up does it, noting the outermost
    cached module-level functions that the forward pass's compile compiles."""
    found: list[tuple[str, tuple[Any, ...], float]] = []
    repacking = [0.0]
    done = [False]  # the forward pass compiled: what follows is not the warm-up's

    def on_end(ev: Any, first: int, took: float, depth: int) -> None:
        name = name_of(ev)
        if done[0]:
            return
        if depth == 0:  # the repacking kernels, then the forward pass
            done[0] = name == _ROOT
            if not done[0]:
                repacking[0] += took
                found.clear()
        elif is_cached(ev) and "<locals>" not in name and _resolve(name) is ev.data["dispatcher"]:
            del found[first:]  # the cached functions compiled inside it come with it
            found.append((name, tuple(ev.data["args"]), took))

    listen(lambda: len(found), on_end)
    from warm_up import compile_repacking

    from numallm.engine.engine import Engine
    from numallm.engine.model_store import DEFAULT_MODEL, fetch_known_model

    compile_repacking()
    Engine(fetch_known_model(DEFAULT_MODEL)).close()
    return {"repacking_seconds": round(repacking[0], 2), "functions": [
        {"function": name, "signature": base64.b64encode(pickle.dumps(args)).decode(),
         "types": str(args), "seconds": round(took, 2)} for name, args, took in found]}


def compiled_with(entry: Entry) -> set[str]:
    """The cached functions (with their argument types) that compiling `entry` alone
    compiles: run in a process of its own with an empty cache."""
    names: set[str] = set()

    def on_end(ev: Any, _: None, took: float, depth: int) -> None:
        if is_cached(ev):
            names.add(name_of(ev) + str(tuple(ev.data["args"])))

    listen(lambda: None, on_end)
    entry.compile()
    return names


def groups(entries: list[Entry]) -> list[int]:
    """Each entry's group: entries whose compiles alone share a function are one."""
    sets = []
    for i in range(len(entries)):
        with tempfile.TemporaryDirectory() as cache:
            done = subprocess.run([sys.executable, __file__, "--compiled-with", str(i)], check=True,
                                  capture_output=True, text=True, env=dict(os.environ, NUMBA_CACHE_DIR=cache))
        sets.append(set(json.loads(done.stdout)))
    group = list(range(len(entries)))
    for i in range(len(entries)):
        for j in range(i):
            if sets[i] & sets[j]:
                old, new = group[i], group[j]
                group = [new if g == old else g for g in group]
    return group


def main() -> int:
    from warm_up import import_source_tree

    if sys.argv[1:2] == ["--compiled-with"]:
        import_source_tree(Path(__file__).resolve().parent.parent)
        print(json.dumps(sorted(compiled_with(load()[1][int(sys.argv[2])]))))
        return 0
    with tempfile.TemporaryDirectory() as cache:
        os.environ["NUMBA_CACHE_DIR"] = cache  # a cold compile, before Numba reads it
        import_source_tree(Path(__file__).resolve().parent.parent)
        plan = record()
    for f in plan["functions"]:
        f["group"] = 0
    PLAN.write_text(json.dumps(plan, indent=1) + "\n")  # for the processes finding the groups
    assigned = groups(load()[1])
    for f, g in zip(plan["functions"], assigned):
        f["group"] = g
    PLAN.write_text(json.dumps(plan, indent=1) + "\n")
    total = sum(f["seconds"] for f in plan["functions"])
    print(f"{PLAN.name}: {len(plan['functions'])} functions in {len(set(assigned))} groups, "
          f"{total:.1f} s of compile", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
