"""How torch's idle CPU threads wait, set by every entry point before torch loads.

torch's CPU kernels run their parallel regions on GNU OpenMP (``libgomp``, shipped in the
torch wheel). Between two regions a worker thread spins ``GOMP_SPINCOUNT`` times (300,000 by
default) before it sleeps. On a machine where another process keeps a core busy, that spin is
a disaster: the spinning worker holds the one free core while the thread that has the next
operation waits for a scheduler slice, once per operation, so small operations cost
milliseconds each.

Measured on the project's 2-core VM (2026-12-06, 2 torch threads, one training epoch of
``python -m benchmarks.profile_epoch`` on movielens, seconds; "loaded": one single-threaded
befa training process, at nice 10, on the other core):

=================  ===============================  ================================  =================================
GOMP_SPINCOUNT     quiet: LightGCN / BM3 / FREEDOM  loaded: LightGCN / BM3 / FREEDOM  serving tests (s): quiet / loaded
=================  ===============================  ================================  =================================
300,000 (default)  0.085 / 0.32 / 0.22              9.97 / 12.3 / 15.1                9.8 / 104.6
10,000 (befa's)    0.093 / 0.28 / 0.23              0.53 / 1.46 / 1.47                9.8 / 20.2
1,000              0.139 / 0.40 / 0.31              0.16 / 0.74 / 0.58                11.1 / 10.8
=================  ===============================  ================================  =================================

(``OMP_WAIT_POLICY=PASSIVE``, no spin at all: quiet 0.21 / 0.50 / 0.45.) 10,000 costs nothing
measurable on a quiet machine and removes most of the loss on a shared one; the rest of it is
two threads competing for one core (one thread, ``befa run --threads 1`` or any command under
``taskset -c 0``, is the cure there: about 0.11 s for the same LightGCN epoch). It changes no
result: only how long an idle thread spins.

:func:`bound_omp_spin` sets it, unless the user set ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``
(theirs wins). ``libgomp`` reads it once, when torch is imported, so it is called first thing
by the ``befa`` command, the ``flows`` package and the test suite's ``conftest.py``; in a
process that has already imported torch it changes nothing (:data:`applied` says so).
"""

from __future__ import annotations

import os
import sys

SPIN_ENV = "GOMP_SPINCOUNT"
POLICY_ENV = "OMP_WAIT_POLICY"
SPIN_COUNT = "10000"

applied: bool | None = None  # None: not called; False: the user's setting kept, or torch already loaded


def bound_omp_spin() -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` for this process and its children; True when
    it takes effect here (torch not imported yet and no user setting)."""
    global applied
    if SPIN_ENV in os.environ or POLICY_ENV in os.environ:
        applied = False
        return applied
    os.environ[SPIN_ENV] = SPIN_COUNT
    applied = "torch" not in sys.modules
    return applied
