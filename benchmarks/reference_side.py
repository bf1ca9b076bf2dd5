"""The reference toolbox's side of ``make bench-vs-reference``: its venv, a writable copy of
its sources and the command that runs one model.

The reference (MMRec, unmodified, GPL-3.0) lives outside this repository, in
``../shared/reference-impl/`` (``--reference``): ``mmrec/src`` and ``mmrec-runner/run_mmrec.py``,
a runner with run-time shims that writes each epoch's training seconds and end timestamp and
each evaluation's seconds to a JSON (read by :func:`benchmarks.pair_timing.mmrec_spans`).
Nothing here imports it: it only ever runs as a separate process.

Its venv (:func:`side_venv`) is built once under ``bench-results/vs-reference/mmrec-venv`` and
reused while its marker matches: ``python3.11 -m venv`` from the interpreter befa's venv was
made from, a ``.pth`` file whose one line is befa's venv site-packages (torch, scipy, pandas,
pyyaml come from there; a plain path line, so befa's own editable install there is not
activated and MMRec's ``models`` package cannot clash with befa's), plus ``pip install
lmdb==3.0.0`` (MMRec's dataset code imports it). It is built in a temporary folder and
renamed into place, so a build that fails leaves nothing half made. Only its ``bin/python``
is used after the rename (the ``pip`` script's first line keeps the temporary path).

MMRec's hyper-parameters are its own defaults from its ``configs/`` with the runner's
embedding 64, batch 2048 and lr 1e-3. Where its model file holds a grid (a list) instead of a
value, one value has to be set, and it is befa's default for that model (:data:`MMREC_MODELS`),
so both sides train the same configuration.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

LMDB = "lmdb==3.0.0"
MARKER = "befa-bench-venv.json"
# befa model -> (MMRec model, values for the keys its model config gives as a grid: befa's defaults)
MMREC_MODELS: dict[str, tuple[str, dict[str, float]]] = {
    "lightgcn": ("LightGCN", {"n_layers": 2, "reg_weight": 1e-4}),
    "bm3": ("BM3", {"n_layers": 1, "dropout": 0.5, "reg_weight": 0.1}),
    "freedom": ("FREEDOM", {"dropout": 0.8, "reg_weight": 1e-3}),
    "mgcn": ("MGCN", {"cl_loss": 0.01}),
    "lattice": ("LATTICE", {"reg_weight": 0.0}),
}


class ReferenceMissing(ValueError):
    """The ``--reference`` folder lacks the toolbox or its runner."""


def check_reference(root: Path) -> Path:
    """``root`` if it holds ``mmrec/src`` and ``mmrec-runner/run_mmrec.py``; else a one-line error."""
    for need in (root / "mmrec" / "src" / "common" / "trainer.py", root / "mmrec-runner" / "run_mmrec.py"):
        if not need.is_file():
            raise ReferenceMissing(f"--reference {root}: no {need.relative_to(root)} there (see its README.md)")
    return root


def _marker(befa_site: str) -> dict[str, str]:
    return {"befa_site_packages": befa_site, "python": sys.version.split()[0], "lmdb": LMDB}


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"reference venv: {what} failed (exit {proc.returncode}): {tail}")


def side_venv(folder: Path, log=print) -> Path:
    """The reference's venv at ``folder`` (built when missing or stale); returns its python."""
    befa_site = sysconfig.get_paths()["purelib"]
    want = _marker(befa_site)
    python = folder / "bin" / "python"
    try:
        if json.loads((folder / MARKER).read_text()) == want and python.exists():
            return python
    except (OSError, ValueError):
        pass
    log(f"building the reference's venv in {folder} (python3.11 -m venv, .pth to befa's site-packages, {LMDB})")
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    base = getattr(sys, "_base_executable", None) or shutil.which("python3.11") or sys.executable
    _run([base, "-m", "venv", str(tmp)], "python -m venv")
    tmp_python = tmp / "bin" / "python"
    site = subprocess.run(
        [str(tmp_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "befa-site-packages.pth").write_text(befa_site + "\n")
    _run([str(tmp_python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", LMDB], "pip install")
    _run([str(tmp_python), "-c", "import lmdb, numpy, pandas, scipy, torch, yaml"], "the import check")
    (tmp / MARKER).write_text(json.dumps(want))
    shutil.rmtree(folder, ignore_errors=True)  # a stale one
    try:
        os.replace(tmp, folder)
    except OSError:  # another run put a fresh one there meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return python


def writable_sources(reference: Path, dest: Path) -> Path:
    """A writable copy of ``mmrec/src`` at ``dest`` (MMRec writes its logs under its working
    directory; the shared copy is read-only)."""
    shutil.copytree(reference / "mmrec" / "src", dest, copy_function=shutil.copyfile)
    for here, dirs, files in os.walk(dest):
        os.chmod(here, 0o755)
        for name in files:
            os.chmod(os.path.join(here, name), 0o644)
    return dest


def runner_command(
    python: Path, reference: Path, model: str, data_dir: Path, dataset: str, out: Path, epochs: int, seed: int
) -> list[str]:
    """The runner's command line for one befa model name (run it with MMRec's src copy as cwd)."""
    name, grid_values = MMREC_MODELS[model]
    cmd = [str(python), str(reference / "mmrec-runner" / "run_mmrec.py"), name, str(data_dir), dataset, str(out)]
    cmd += ["--epochs", str(epochs), "--threads", "1", "--seed", str(seed)]
    for key, value in grid_values.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    return cmd


def runner_env() -> dict[str, str]:
    """The environment of the reference's process: one thread everywhere, no PYTHONPATH (befa's
    ``models`` package must not shadow MMRec's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, **single_thread_env()}


def single_thread_env() -> dict[str, str]:
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
