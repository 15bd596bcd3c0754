"""The two engines `numallm bench` times, behind one interface: prompt() and generate().

Both follow llama-bench's protocol: pp N is one prefill of N tokens from an empty
context in batches of 512; tg N is N single-token decodes at positions 0..N-1, each
one waited for. Each call returns the seconds it took; token ids are the caller's.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np

from numallm.engine.engine import N_BATCH, Engine
from numallm.errors import BadInputError, NumallmError

INSTALL_HINT = "pip install -e '.[llama-cpp]'"


class Runner(Protocol):
    engine_name: str
    numa: str
    load_mode: str

    def prompt(self, ids: np.ndarray) -> float: ...

    def generate(self, ids: np.ndarray) -> float: ...


class NumallmRunner:
    """Our engine, driven below the sampling layer so only the forward pass is timed."""

    engine_name = "numallm"

    def __init__(self, engine: Engine, numa: str, load_mode: str) -> None:
        self._e = engine
        self.numa = numa
        self.load_mode = load_mode

    def prompt(self, ids: np.ndarray) -> float:
        t0 = time.perf_counter()
        self._e._prefill(ids)
        return time.perf_counter() - t0

    def generate(self, ids: np.ndarray) -> float:
        run = self._e._run
        t0 = time.perf_counter()
        for pos in range(len(ids)):
            run(ids[pos:pos + 1], pos, False)
        return time.perf_counter() - t0


def import_llama_cpp() -> ModuleType:
    """llama-cpp-python, or a BadInputError saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise BadInputError("--vs-llama-cpp needs llama-cpp-python, which is not installed; "
                            f"install it with: {INSTALL_HINT}") from None
    except (OSError, RuntimeError) as e:  # installed, but its shared library does not load
        raise NumallmError(f"llama-cpp-python is installed but cannot be loaded ({e}); "
                           f"reinstall it with: {INSTALL_HINT}") from None
    return llama_cpp


# How llama.cpp reads the weights for each of our load modes: mapped, read into memory,
# or mapped and locked. Modes not listed map the file, llama.cpp's default.
_LLAMA_LOAD_MODES = {"none": "none", "dio": "none", "mlock": "mlock"}


class LlamaCppRunner:
    """llama.cpp through llama-cpp-python's C API, the calls llama-bench makes."""

    engine_name = "llama.cpp"
    numa = "none"  # llama.cpp's default: no NUMA strategy

    def __init__(self, llama_cpp: ModuleType, path: Path, threads: int, n_ctx: int, kv_type: str,
                 our_load_mode: str) -> None:
        self._lc = llama_cpp
        self.load_mode = _LLAMA_LOAD_MODES.get(our_load_mode, "mmap")
        kv = llama_cpp.GGML_TYPE_F16 if kv_type == "f16" else llama_cpp.GGML_TYPE_F32
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                n_batch=N_BATCH, n_ubatch=N_BATCH, type_k=kv, type_v=kv,
                use_mmap=self.load_mode != "none", use_mlock=self.load_mode == "mlock", verbose=False)
        except (ValueError, RuntimeError) as e:
            raise NumallmError(f"llama.cpp cannot load {path} ({e}); run without --vs-llama-cpp") from None

    def _clear(self) -> None:
        self._lc.llama_memory_clear(self._lc.llama_get_memory(self._llm.ctx), True)

    def _decode_at(self, base: int, offset: int, n: int) -> None:
        """Decode n tokens of the ctypes array at address `base`, starting at element offset."""
        ptr = ctypes.cast(base + offset * ctypes.sizeof(self._lc.llama_token),
                          ctypes.POINTER(self._lc.llama_token))
        rc = self._lc.llama_decode(self._llm.ctx, self._lc.llama_batch_get_one(ptr, n))
        if rc != 0:
            raise NumallmError(f"llama.cpp's llama_decode failed with status {rc}")
        self._lc.llama_synchronize(self._llm.ctx)

    def _tokens(self, ids: np.ndarray) -> ctypes.Array:  # type: ignore[type-arg]
        # Built before the clock starts; the caller keeps it alive while its address is used.
        return (self._lc.llama_token * len(ids))(*(int(i) for i in ids))

    def prompt(self, ids: np.ndarray) -> float:
        self._clear()
        arr = self._tokens(ids)
        base = ctypes.addressof(arr)
        t0 = time.perf_counter()
        for start in range(0, len(ids), N_BATCH):
            self._decode_at(base, start, min(N_BATCH, len(ids) - start))
        return time.perf_counter() - t0

    def generate(self, ids: np.ndarray) -> float:
        self._clear()
        arr = self._tokens(ids)
        base = ctypes.addressof(arr)
        t0 = time.perf_counter()
        for pos in range(len(ids)):
            self._decode_at(base, pos, 1)
        return time.perf_counter() - t0

    def close(self) -> None:
        self._llm.close()
