"""befa: flows.

A served flow run is a fresh process that imports this package first: the known
third-party notices (:mod:`pipeline.quiet`) are silenced here, before any flow module
imports torch or an encoder, as the ``befa`` command does.
"""

from pipeline.cpu_threads import bound_omp_spin
from pipeline.quiet import quiet_known_warnings

bound_omp_spin()  # before torch loads (pipeline.cpu_threads), as the ``befa`` command does
quiet_known_warnings()
