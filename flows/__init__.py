"""befa: flows.

A served flow run is a fresh process that imports this package first: the known
third-party notices (:mod:`pipeline.quiet`) are silenced here, before any flow module
imports torch or an encoder, as the ``befa`` command does.
"""

from pipeline.quiet import quiet_known_warnings

quiet_known_warnings()
