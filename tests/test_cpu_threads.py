"""``pipeline.cpu_threads``: every entry point bounds OpenMP's idle spin before torch loads, and a
user's own OpenMP setting wins. Fresh processes: libgomp reads the setting once, at load."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.cpu_threads import POLICY_ENV, SPIN_COUNT, SPIN_ENV

PROBE = (
    "import os, sys\n"
    "import {entry}\n"
    "from pipeline import cpu_threads\n"
    "print(cpu_threads.applied, os.environ.get({spin!r}), 'torch' in sys.modules)\n"
)


def _probe(entry: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in (SPIN_ENV, POLICY_ENV)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(entry=entry, spin=SPIN_ENV)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


@pytest.mark.parametrize("entry", ["pipeline.cli.main", "flows"])
def test_entry_points_bound_the_spin_before_torch_loads(entry):
    applied, spin, _ = _probe(entry)
    assert (applied, spin) == ("True", SPIN_COUNT)  # True: torch was not loaded yet when it was set


def test_the_users_own_openmp_setting_wins():
    assert _probe("pipeline.cli.main", **{SPIN_ENV: "500"})[:2] == ["False", "500"]
    assert _probe("pipeline.cli.main", **{POLICY_ENV: "ACTIVE"})[:2] == ["False", "None"]


def test_a_process_that_already_loaded_torch_is_told_it_changed_nothing():
    clean = {k: v for k, v in os.environ.items() if k not in (SPIN_ENV, POLICY_ENV)}
    code = "import torch\nfrom pipeline.cpu_threads import bound_omp_spin\nprint(bound_omp_spin())"
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
