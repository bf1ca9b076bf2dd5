"""Known third-party notices that say nothing about the user's data, silenced in one place.

:func:`quiet_known_warnings` is called by every entry point: the ``befa`` command (before any
command module loads), the ``flows`` package (a served flow run is a fresh process that
imports it) and the library's own ways in (``extract_features``, which loads the encoders,
and ``build_model``, the one model constructor of training, evaluation and serving), so a
script, a Prefect flow run or a Ray worker is as quiet as the CLI. It silences:

- PyTorch's beta note on the sparse CSR tensors befa builds its graphs with (befa opts out
  of the invariant checks explicitly, so that second note does not come up; it is listed
  for tensors built elsewhere);
- PyTorch deprecating ``torch.jit.script``, which third-party packages still call on import;
- open_clip's "No pretrained weights loaded", logged whenever a CLIP network is built before
  befa loads its checkpoint (befa states the weights it used, random init included, in every
  summary and report);
- the "Loading weights" progress bars of transformers and the Hugging Face hub (a bar per
  model load; in a log file, a line of carriage returns). ``HF_HUB_DISABLE_PROGRESS_BARS``
  set by the user wins.

Everything else still shows. Calling it again changes nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    (UserWarning, r"Sparse CSR tensor support is in beta state"),
    (UserWarning, r"Sparse invariant checks are implicitly disabled"),
)
KNOWN_LOG_MESSAGES = ("No pretrained weights loaded",)
PROGRESS_BARS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"


class _DropKnownMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(KNOWN_LOG_MESSAGES)


def quiet_known_warnings() -> None:
    """Silence :data:`KNOWN_WARNINGS`, :data:`KNOWN_LOG_MESSAGES` and the model-loading bars."""
    for category, pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    root = logging.getLogger()
    if not any(isinstance(f, _DropKnownMessages) for f in root.filters):
        root.addFilter(_DropKnownMessages())
    _no_loading_bars()


def _no_loading_bars() -> None:
    """transformers reads the hub's switch when it is imported: the variable covers a later import,
    the calls an earlier one (nothing is imported here)."""
    if os.environ.setdefault(PROGRESS_BARS_ENV, "1").upper() not in ("1", "ON", "YES", "TRUE"):
        return  # the user asked for the bars
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None:
        hub.disable_progress_bars()
    tf_logging = sys.modules.get("transformers.utils.logging")
    if tf_logging is not None:
        tf_logging.disable_progress_bar()
