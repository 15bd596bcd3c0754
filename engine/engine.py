"""The Engine: load a GGUF model once, then tokenize, generate, chat and score.

Data flows one way: file -> GGUF reader -> weights (placed) -> forward pass (kernels)
-> logits -> sampler -> tokens -> streaming detokenizer -> text.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from numallm.engine.arch.spec import ArchSpec
from numallm.engine.chat_template import ChatTemplate, ChatTemplateError
from numallm.engine.embedding import check_pooling, model_pooling, pool
from numallm.engine.barrier import new_barrier
from numallm.kernels import batch_invariant, kernel_set
from numallm.engine.forward import (
    EMBED_TOKENS,
    ROUTER_DECIDES,
    Batch,
    WorkerMemory,
    forward,
    kv_writers,
    plain,
    scratch,
)
from numallm.engine.gc_pause import gc_paused
from numallm.engine.gguf_file import GGUFFile
from numallm.engine.kv_cache import kv_bytes_per_token
from numallm.engine.model_load import load_model
from numallm.engine.paths import Paths
from numallm.engine.sampling import SamplingParams
from numallm.engine.sequence import SequenceState
from numallm.engine.tokenizer import Tokenizer
from numallm.errors import BadInputError, ModelFormatError, NumallmError
from numallm.numa.workers import WorkerPool, WorkerSlot
from numallm.progress import working

N_BATCH = 512  # prompt tokens per forward call, as llama.cpp's default n_batch


@dataclass
class Stats:
    """Timings of the last call, as llama.cpp prints them."""

    load_s: float = 0.0
    prompt_tokens: int = 0
    prompt_s: float = 0.0
    gen_tokens: int = 0
    gen_s: float = 0.0

    def line(self) -> str:
        pp = self.prompt_tokens / self.prompt_s if self.prompt_s > 0 else 0.0
        tg = self.gen_tokens / self.gen_s if self.gen_s > 0 else 0.0
        return (f"load {self.load_s:.2f} s | prompt {self.prompt_tokens} tokens, {pp:.1f} t/s"
                f" | generation {self.gen_tokens} tokens, {tg:.1f} t/s")


def _log(msg: str) -> None:
    print(f"numallm: {msg}", file=sys.stderr, flush=True)


def _cache_counts() -> tuple[int, int]:
    """Numba's cache hits and misses of the forward pass in this process so far."""
    stats = forward.stats
    return sum(stats.cache_hits.values()), sum(stats.cache_misses.values())


class Engine:
    """A loaded model. Calls from several threads are serialised; close() frees it."""

    @gc_paused()  # see gc_pause: collections during a load only walk long-lived objects
    def __init__(self, model: str | os.PathLike[str] | None = None, *, numa: str = "auto",
                 load_mode: str = "auto", threads: int | None = None, ctx_size: int | None = None,
                 kv_type: str = "f16", smt: bool = False, n_slots: int = 1, numa_node: int | None = None,
                 hugepages: bool = True, mirror_budget: int | str | None = None, verbose: bool = False,
                 layers: tuple[int, int] | None = None) -> None:
        """layers (first, last): only the model's layers [first, last), as a pipeline stage
        (cluster/) holds them; see eval_batch."""
        t0 = time.perf_counter()
        self.verbose = verbose
        self._pool: WorkerPool | None = None
        self._lock = threading.RLock()
        self._scratch: dict[int, tuple[np.ndarray, ...]] = {}  # plain(Scratch) by batch size
        self._worker_memory: list[WorkerMemory] | None = []
        loaded = load_model(model, numa=numa, numa_node=numa_node, mirror_budget=mirror_budget,
                            load_mode=load_mode, hugepages=hugepages,
                            threads=threads, smt=smt, ctx_size=ctx_size, kv_type=kv_type, n_slots=n_slots,
                            layers=layers, verbose=verbose, check_file=functools.partial(self._check_file, ctx_size))
        self.path, self.spec, self.hparams = loaded.path, loaded.spec, loaded.spec.hparams
        hp, gf, plan = self.hparams, loaded.gf, loaded.workers
        self.n_ctx, self.n_slots, self.placed = loaded.n_ctx, n_slots, loaded.placed
        self.pooling = model_pooling(gf.metadata)  # of embed(): the GGUF's, "none" for most chat models
        self._blas_limits = threadpool_limits(limits=1)  # BLAS threads would fight the workers
        try:
            self.numa = self.placed.plan.mode
            self.weights = self.placed.weights
            self._kernels = kernel_set(self.weights.qtypes)
            self._paths = Paths.of(hp)
            self._model_args = plain(hp), plain(self.weights.tables)  # forward's, the same every call
            # Each worker gets its own node's weights and KV arrays, and the KV heads it writes there.
            writers = kv_writers(hp.n_head, hp.n_head_kv, [self.placed.key(s.worker) for s in plan])
            self._worker_memory = [WorkerMemory(*self.placed.buffers(s.worker), writers[s.worker]) for s in plan]
            self._pool = WorkerPool(plan)
            self._bar = new_barrier()
            self.chat_template = self._load_chat_template(gf.metadata)
            self._warmup()
        except BaseException:
            self.close()
            raise
        self.stats = Stats(load_s=time.perf_counter() - t0)
        if verbose:
            _log(self.placed.why)
            _log(f"loaded {self.path.name}: {self.spec.name}, {hp.n_layer} layers, "
                 f"{self.weights.matrix_bytes / 1e6:.1f} MB of weights "
                 f"(load mode {self.weights.load_mode}, {'mapped' if self.weights.mapped else 'copied'}), n_ctx {self.n_ctx}, "
                 f"KV cache {kv_type} {self.placed.kv_nbytes / 1e6:.1f} MB "
                 f"({kv_bytes_per_token(hp, kv_type)} B per token{', latent' if hp.kv_lora_rank else ''}), "
                 f"{len(plan)} workers on CPUs "
                 f"{','.join(str(s.cpu) for s in plan)}, in {self.stats.load_s:.2f} s")

    # -- loading ---------------------------------------------------------------------

    def _check_file(self, ctx_size: int | None, path: Path, gf: GGUFFile, spec: ArchSpec) -> None:
        """Read the tokenizer before anything is placed, so a bad vocabulary fails fast, and
        warn of a context past the trained one (generation degrades there)."""
        hp = spec.hparams
        try:
            self.tokenizer = Tokenizer.from_metadata(gf.metadata)
        except ModelFormatError as e:  # the tokenizer sees metadata only: name the file
            raise type(e)(f"{path}: {e}") from None
        if self.tokenizer.n_vocab != hp.n_vocab:
            raise BadInputError(f"{path}: vocabulary has {self.tokenizer.n_vocab} tokens but the "
                                f"model's embedding has {hp.n_vocab} rows")
        n_ctx = int(ctx_size) if ctx_size else 0  # 0: sized to the model, never past it
        if n_ctx > 0 and n_ctx > hp.n_ctx_train:  # a non-positive one is refused next
            _log(f"warning: --ctx-size {n_ctx} is above the model's trained context "
                 f"{hp.n_ctx_train}; quality may degrade past it")

    def _load_chat_template(self, md: dict[str, Any]) -> ChatTemplate:
        tok = self.tokenizer
        bos = tok.detokenize([tok.bos_id], special=True) if tok.bos_id is not None else ""
        eos = tok.detokenize([tok.eos_id], special=True) if tok.eos_id is not None else ""
        tmpl = ChatTemplate.from_metadata(md, self.spec.name, bos, eos)
        if self.verbose and tmpl.source != "gguf":
            why = f" ({tmpl.fallback_reason})" if tmpl.fallback_reason else ""
            _log(f"chat template: the file has none usable, using {tmpl.source}{why}")
        return tmpl

    def _warmup(self) -> None:
        """Compile (or load from Numba's cache) the forward pass now, not at the first token.
        One compiled function serves every batch size and carries its own copy of every
        kernel it calls, so one 1-token run loads it all."""
        types = ", ".join(sorted(t.name for t in self.weights.qtypes))
        before = _cache_counts()
        t0 = time.perf_counter()
        with working(f"numallm: compiling the forward pass for {types} (once per model type mix; "
                     "Numba caches it)"):
            one = np.zeros(1, np.int32)
            states = None if self.spec.embeds else np.zeros((1, self.hparams.n_embd), np.float32)
            self._eval(one, one, one, one, states=states)
        if self.verbose:
            hits, misses = (now - then for now, then in zip(_cache_counts(), before))
            how = "compiled" if misses else "loaded from Numba's cache" if hits else "compiled earlier in this process"
            _log(f"forward pass for {types}: {how}, {time.perf_counter() - t0:.2f} s")

    # -- the forward pass ------------------------------------------------------------

    def _buffers(self, n: int) -> tuple[np.ndarray, ...]:
        """The activations the workers share for a batch of n tokens (reused), as forward takes them."""
        if n not in self._scratch:
            if len(self._scratch) > 2:
                self._scratch.clear()
            self._scratch[n] = plain(scratch(self.hparams, n, len(self._pool)))
        return self._scratch[n]

    def _run(self, tokens: np.ndarray, pos0: int, all_logits: bool) -> np.ndarray:
        """A run of slot 0's tokens from position pos0: logits of every token or the last."""
        n = len(tokens)
        rows = np.arange(n if all_logits else 1, dtype=np.int32) + (0 if all_logits else n - 1)
        return self._eval(tokens, np.zeros(n, np.int32), np.arange(pos0, pos0 + n, dtype=np.int32), rows)

    def _eval(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray, rows: np.ndarray,
              hidden: bool = False, routing: np.ndarray | None = None, states: np.ndarray | None = None) -> np.ndarray:
        """The logits of the rows `rows`; with hidden, their final hidden states instead
        (a stage without the output: the residual stream; with states: the stream entering)."""
        if self._pool is None:
            raise NumallmError("this Engine is closed; create a new one")
        residual = not self.spec.outputs
        width = self.hparams.n_embd if hidden or residual else self.hparams.n_vocab
        logits = np.empty((len(rows), width), np.float32)
        batch = Batch(tokens, slots, positions, rows, hidden, ROUTER_DECIDES if routing is None else routing,
                      EMBED_TOKENS if states is None else states, residual)
        self._pool.run(self._worker_forward, len(self._pool), plain(batch),
                       logits, self._buffers(len(tokens)))
        return logits

    def _worker_forward(self, slot: WorkerSlot, n_workers: int, batch: tuple[np.ndarray, ...], logits: np.ndarray,
                        activations: tuple[np.ndarray, ...]) -> None:
        hparams, tables = self._model_args
        forward(slot.worker, n_workers, self._bar, hparams, tables, plain(self._worker_memory[slot.worker]), batch,
                logits, activations, self._kernels, self._paths)

    def eval_batch(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray, logits_rows: np.ndarray,
                   routing: np.ndarray | None = None, states: np.ndarray | None = None,
                   hidden: bool = False) -> np.ndarray:
        """Run token i at position positions[i] of sequence slot slots[i], all in one pass
        (each weight read once for the batch); logits of the rows logits_rows, in order
        (with hidden, their final hidden states). routing [n, n_layer, n_expert_used],
        where >= 0, replaces the router's choice of experts (to replay another
        implementation's routing, as the tests do llama.cpp's).

        A pipeline stage (Engine(layers=...)) after the first starts from `states`, the
        residual stream [n, n_embd] the previous stage returned; one before the last
        returns the stream leaving its layers, of the rows logits_rows.

        The cache of a slot holds whatever was run in it: positions before positions[i]
        must have been run in that slot (earlier, or earlier in this batch). A slot is
        reused by running from position 0 again."""
        args = self._checked_batch(tokens, slots, positions, logits_rows, routing, states)
        with self._lock:
            return self._eval(*args[:4], hidden, *args[4:])

    # forward calls the batching scheduler keeps in flight: a pipeline's stage count (cluster/)
    depth = 1

    def submit_batch(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray,
                     logits_rows: np.ndarray) -> Callable[[], np.ndarray]:
        """eval_batch begun: the function returned gives its logits. One process runs it
        now; a pipeline returns at once, its stages working while the caller goes on, so
        that `depth` calls of different sequences overlap (each on its own stage)."""
        logits = self.eval_batch(tokens, slots, positions, logits_rows)
        return lambda: logits

    def _checked_batch(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray, logits_rows: np.ndarray,
                       routing: np.ndarray | None, states: np.ndarray | None) -> tuple[Any, ...]:
        """eval_batch's arguments checked, as the forward pass takes them (routing and states last)."""
        # Writable too: Numba types a read-only array (as Ray or np.frombuffer hand out) apart, and would compile again.
        tokens, slots, positions, logits_rows = (np.require(a, np.int32, "CW")
                                                 for a in (tokens, slots, positions, logits_rows))
        n = len(tokens)
        if n == 0 or len(slots) != n or len(positions) != n:
            raise BadInputError("eval_batch: tokens, slots and positions must be non-empty and of one length")
        for name, arr, hi in (("token ids", tokens, self.hparams.n_vocab), ("slots", slots, self.n_slots),
                              ("positions", positions, self.n_ctx), ("logits rows", logits_rows, n)):
            if len(arr) and (arr.min() < 0 or arr.max() >= hi):
                raise BadInputError(f"eval_batch: {name} must be in [0, {hi})")
        hp = self.hparams
        if (states is None) != self.spec.embeds or (states is not None and states.shape != (n, hp.n_embd)):
            raise BadInputError(f"eval_batch: states [{n}, {hp.n_embd}] are needed exactly when the engine "
                                "does not hold the token embeddings (a pipeline stage after the first)")
        if states is not None:
            states = np.require(states, np.float32, "CW")
        if routing is not None:
            routing = np.require(routing, np.int32, "CW")
            if routing.shape != (n, hp.n_layer, hp.n_expert_used) or routing.max(initial=-1) >= hp.n_expert:
                raise BadInputError(f"eval_batch: routing must be [{n}, {hp.n_layer}, {hp.n_expert_used}] "
                                    f"expert numbers below {hp.n_expert} (or -1)")
        return tokens, slots, positions, logits_rows, routing, states

    @property
    def batch_invariant(self) -> bool:
        """Does every token get the same bits in a batch of any size? True when the
        kernels of all the model's matrix types say so (the tiled types): then a cache
        prefix computed for one sequence is bit for bit what another would compute."""
        return batch_invariant(self.weights.qtypes)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make positions [0, n) of slot dst's cache those of slot src, on every node that
        keeps a copy (only the KV heads its workers write: the others are never touched)."""
        if not (0 <= src < self.n_slots and 0 <= dst < self.n_slots and 0 <= n <= self.n_ctx):
            raise BadInputError(f"copy_prefix: slots must be in [0, {self.n_slots}) and n in [0, {self.n_ctx}]")
        with self._lock:
            heads: dict[int, tuple[np.ndarray, np.ndarray, set[int]]] = {}
            for mem in self._worker_memory or ():
                heads.setdefault(id(mem.k), (mem.k, mem.v, set()))[2].update(int(h) for h in mem.kv_heads)
            for kc, vc, hs in heads.values():
                for h in sorted(hs):
                    kc[dst, :, h, :n] = kc[src, :, h, :n]
                    vc[dst, :, h, :n] = vc[src, :, h, :n]

    def _checked(self, ids: Sequence[int]) -> np.ndarray:
        arr = np.asarray(ids, np.int32)
        if len(arr) == 0:
            raise BadInputError("the prompt is empty after tokenization")
        if len(arr) > self.n_ctx:
            raise BadInputError(f"the prompt has {len(arr)} tokens, more than the context size "
                                f"{self.n_ctx}; shorten it or raise -c/--ctx-size")
        if arr.min() < 0 or arr.max() >= self.hparams.n_vocab:
            raise BadInputError(f"token ids must be in [0, {self.hparams.n_vocab})")
        return arr

    def _prefill(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        arr = self._checked(ids)
        outs = []
        for start in range(0, len(arr), N_BATCH):
            chunk = arr[start:start + N_BATCH]
            last = start + N_BATCH >= len(arr)
            if all_logits or last:
                outs.append(self._run(chunk, start, all_logits))
            else:
                self._run(chunk, start, False)
        return np.concatenate(outs) if all_logits else outs[-1][0]

    # -- public API ------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer.tokenize(text, add_special=add_special, parse_special=True)

    def detokenize(self, ids: Sequence[int], special: bool = False) -> str:
        return self.tokenizer.detokenize(ids, special=special)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Raw logits [len(ids), n_vocab] at every position, from a fresh context."""
        with self._lock:
            return self._prefill(ids, all_logits=True)

    def embed(self, text: str | Sequence[int], pooling: str | None = None, slot: int = 0) -> np.ndarray:
        """llama.cpp's embedding of `text` (or token ids): the final hidden state of every
        token (after output_norm), pooled ("mean", "cls" or "last"; default the model's
        own, see engine/embedding.py) and scaled to unit length. It runs in cache slot
        `slot`, overwriting what that slot held."""
        pooling = check_pooling(pooling or self.pooling)
        arr = self._checked(self.tokenize(text) if isinstance(text, str) else text)
        if not 0 <= slot < self.n_slots:
            raise BadInputError(f"embed: slot must be in [0, {self.n_slots})")
        n = len(arr)
        with self._lock:
            hidden = np.concatenate([self._eval(arr[s:s + N_BATCH], np.full(min(N_BATCH, n - s), slot, np.int32),
                                                np.arange(s, min(s + N_BATCH, n), dtype=np.int32),
                                                np.arange(min(N_BATCH, n - s), dtype=np.int32), hidden=True)
                                     for s in range(0, n, N_BATCH)])
        return pool(hidden, pooling)

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 repeat_last_n: int = 64, seed: int | None = None, stop: Sequence[str] = (),
                 stream: bool = False, add_special: bool = True, ignore_eos: bool = False) -> str | Iterator[str]:
        """Continue `prompt`. max_tokens < 0 runs until an end-of-generation token or the
        context is full. With stream=True, returns an iterator of text pieces. prompt may
        also be token ids, used as they are (add_special then does nothing)."""
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                                seed=-1 if seed is None else seed)
        params.validate()
        ids = self.tokenize(prompt, add_special=add_special) if isinstance(prompt, str) else list(prompt)
        pieces = self._generate_ids(ids, params, max_tokens, tuple(stop), ignore_eos)
        return pieces if stream else "".join(pieces)

    def chat_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """A conversation formatted with the model's chat template (its built-in fallback
        when the file's template fails), ready for the reply: token ids. `tools` are
        OpenAI function tools for templates that describe them."""
        try:
            prompt = self.chat_template.render(messages, add_generation_prompt=True, tools=tools)
        except ChatTemplateError as e:
            fallback = ChatTemplate.builtin(self.spec.name, str(e))
            _log(f"warning: {e}; using the built-in {fallback.source} format")
            prompt = fallback.render(messages, add_generation_prompt=True)
        # Templates that write the BOS token themselves must not get a second one.
        bos = self.tokenizer.bos_id
        has_bos = bos is not None and prompt.startswith(self.tokenizer.detokenize([bos], special=True))
        return self.tokenize(prompt, add_special=not has_bos)

    def chat(self, messages: list[dict[str, str]], stream: bool = False, **kwargs: Any) -> str | Iterator[str]:
        """Reply to a conversation, formatted with the model's chat template."""
        return self.generate(self.chat_ids(messages), stream=stream, **kwargs)

    def _generate_ids(self, ids: list[int], params: SamplingParams, max_tokens: int,
                      stop: tuple[str, ...], ignore_eos: bool) -> Iterator[str]:
        with self._lock:
            st = self.stats = Stats(load_s=self.stats.load_s, prompt_tokens=len(ids))
            t0 = time.perf_counter()
            logits = self._prefill(ids)
            st.prompt_s = time.perf_counter() - t0
            seq = SequenceState(self.tokenizer, self.hparams.n_vocab, self.n_ctx, ids, params,
                                max_tokens, stop, ignore_eos)
            t1 = time.perf_counter()
            while True:
                text, done = seq.accept(logits)
                st.gen_tokens = seq.n_generated
                if text:
                    yield text
                if done:
                    break
                logits = self._run(np.array([seq.next_token], np.int32), seq.position, False)[0]
                st.gen_s = time.perf_counter() - t1
            st.gen_s = time.perf_counter() - t1
            tail = seq.finish()
            if tail:
                yield tail

    def page_reports(self) -> list[dict[str, Any]]:
        """Where the pages of the weights and KV cache are (PlacedModel.page_report): one
        report, or a pipeline's one per stage."""
        return [self.placed.page_report()]

    def down(self) -> str | None:
        """What part of the engine is down and restarting (a pipeline stage), or None."""
        return None

    def close(self) -> None:
        """Join the workers and free the weights and the KV cache; safe to call twice."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            if self._worker_memory is not None:
                self._worker_memory = None  # views into the buffers placed.close() unmaps
                self._scratch.clear()
                self.placed.close()
                self._blas_limits.restore_original_limits()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

