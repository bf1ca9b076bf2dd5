"""``make bench-gpu`` on a machine without a usable GPU: it refuses at once, clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_gpu_refuses_without_a_cuda_gpu():
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so the refusal is checked on every machine
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gpu", "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and "Warning" not in line and "warnings.warn" not in line
    ]
    assert lines == [
        "bench-gpu: no CUDA GPU (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU"
    ], proc.stderr
    assert proc.stdout == ""  # nothing half-measured was printed


def test_bench_gpu_dry_run_on_cpu_runs_every_section():
    # the script's code paths, on CPU at a tiny size: no GPU figure, but no section may break
    argv = [
        "--device",
        "cpu",
        "--images",
        "4",
        "--batch",
        "2",
        "--models",
        "lightgcn",
        "--catalogs",
        "big",
        "--big-scale",
        "0.02",
        "--big-batches",
        "1",
        "--big-eval-users",
        "64",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gpu", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "DRY RUN on CPU" in out and "ERROR" not in out, out
    assert "| end to end / forward |" in out and "| lightgcn |" in out, out
    assert "skipped" not in out, out
