"""The repository root is the numallm package; numa/ must never shadow py-libnuma."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_numa_folder_is_a_namespace_portion() -> None:
    # A regular package here would shadow py-libnuma's top-level `numa` module.
    assert not (ROOT / "numa" / "__init__.py").exists()


def test_import_numa_from_repo_root_finds_py_libnuma() -> None:
    where = _run("import numa; print(numa.__file__)")
    assert Path(where).resolve().parent != (ROOT / "numa").resolve(), where
    assert "site-packages" in where or "dist-packages" in where, where


def test_numallm_subpackages_map_to_top_level_folders() -> None:
    out = _run("import numallm.engine, numallm.kernels, numallm.numa.topology as t; "
               "print(numallm.engine.__file__); print(t.__file__)")
    engine_file, topo_file = out.splitlines()
    assert Path(engine_file).resolve() == (ROOT / "engine" / "__init__.py").resolve()
    assert Path(topo_file).resolve() == (ROOT / "numa" / "topology.py").resolve()


def test_python_dash_m_runs_the_cli_from_repo_root() -> None:
    done = subprocess.run([sys.executable, "-m", "numallm", "--version"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("numallm ")


def test_regular_wheel_contains_every_module(tmp_path: Path) -> None:
    # A module missing from pyproject's package list works in an editable install
    # and breaks a regular one; build the wheel and compare with the source tree.
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("numallm-*.whl")
    inside = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    expected = {f"numallm/{p.relative_to(ROOT).as_posix()}" for folder in ("engine", "kernels", "numa", "bench", "cli", "serve", "cluster")
                for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
    expected |= {f"numallm/{p.name}" for p in ROOT.glob("*.py")}
    assert expected <= inside, sorted(expected - inside)
    pages = {f"numallm/serve/web_files/{p.name}" for p in (ROOT / "serve" / "web_files").iterdir()}
    assert pages <= set(zipfile.ZipFile(wheel).namelist()), "the web page's files are package data"


def test_layers_import_only_downwards() -> None:
    # kernels/ knows arithmetic, numa/ the machine, engine/ models: each imports only the
    # layers below it, and none of them the command line (cli/, bench/, serve/) or argparse.
    # cluster/ (the pipeline on Ray) sits above engine/.
    above = {"kernels": ("engine", "numa", "cli", "bench", "serve", "cluster"),
             "numa": ("engine", "cli", "bench", "serve", "cluster"), "engine": ("cli", "bench", "serve", "cluster")}
    for folder, forbidden in above.items():
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            found = [f"numallm.{name}" for name in forbidden if f"numallm.{name}" in text]
            found += ["argparse"] if "argparse" in text else []
            assert not found, f"{path.relative_to(ROOT)} imports {', '.join(found)}"
