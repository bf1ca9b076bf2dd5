"""Gate health: is BeFA's gate g_m = sigmoid(MLP(c_m)) still selecting by content, or has it
collapsed into a constant (the adapter is then off, whatever the run's metrics say)?

Every epoch of a +BeFA run the trainer computes, per modality, the gate of every item
(eval mode, no autograd: one pass of ``adapters[m].gate`` over ``befa_inputs()[m].content``,
I x d) and records :class:`GateStats` in the epoch's log (``EpochLog.gates``):

- ``mean``: the mean of all I x d gate values;
- ``std_items``: the spread over items, **the mean over the d dimensions of the per-dimension
  standard deviation over the I items** (population std, ``correction=0``). Over items, per
  dimension, because that is the part of the gate that depends on content: a gate that is
  the same vector for every item (whatever its values per dimension) is a fixed rescaling of
  E_i, which E_i can learn by itself, so it selects nothing. The std over all I x d values
  would hide that: it is dominated by the per-dimension offsets (untrained on MovieLens:
  0.022 overall against 0.003-0.010 over items). The mean over dimensions, not the max, so
  one stray dimension does not pass a gate whose other dimensions are constant;
- ``share_high`` / ``share_low``: the share of the I x d values above :data:`HIGH` (0.99) and
  below :data:`LOW` (0.01): a saturated sigmoid, whose gradient is near zero as well.

**Collapse rule** (:func:`is_collapsed`): collapsed when ``std_items < SPREAD_FLOOR`` (1e-3),
or when more than :data:`END_SHARE` (99%) of the values sit at one end (``share_high`` or
``share_low`` > 0.99). Why 1e-3: a freshly initialised gate measures 0.003-0.010 over items
(MovieLens genres / noise content, every model), 0.011 on TikTok (issue 25), and the collapse
measured there fell to 0.0000; at 1e-3 the gates of two items differ by about 0.2% of a gate
near 0.5, a rescaling of E_i the model cannot tell from none. Why the end share: a gate at 1.0
(or 0.0) everywhere passes E_i through unchanged (or zeroes it) whatever the content.

Record-side (``GateStats``, the rule) this module imports no torch, so the run record
(``pipeline.training.record``) stays torch-free; :func:`model_gate_stats` imports it when
it runs, in the trainer.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

HIGH, LOW = 0.99, 0.01  # a gate value above HIGH passes E_i's dimension whole, below LOW drops it
SPREAD_FLOOR = 1e-3  # std over items below this: the gate is the same for every item
END_SHARE = 0.99  # more than this share of values at one end: the gate is saturated
COLLAPSED = "BeFA's gate collapsed: the adapter is off"


def is_collapsed(std_items: float, share_high: float, share_low: float) -> bool:
    """The collapse rule (module docstring): no spread over items, or nearly all values at one end."""
    return std_items < SPREAD_FLOOR or share_high > END_SHARE or share_low > END_SHARE


class GateStats(BaseModel):
    """One modality's gate over every item, at one epoch (definitions: the module docstring)."""

    mean: float
    std_items: float  # mean over dimensions of the per-dimension std over items
    share_high: float  # share of the I x d values > HIGH
    share_low: float  # share of the I x d values < LOW
    collapsed: bool  # is_collapsed(...) when recorded

    @classmethod
    def of(cls, mean: float, std_items: float, share_high: float, share_low: float) -> "GateStats":
        """The stats with ``collapsed`` set by the rule."""
        return cls(
            mean=mean,
            std_items=std_items,
            share_high=share_high,
            share_low=share_low,
            collapsed=is_collapsed(std_items, share_high, share_low),
        )

    def describe(self) -> str:
        return (
            f"mean {self.mean:.3f}, spread over items {self.std_items:.4f}, "
            f"{self.share_high:.1%} > {HIGH}, {self.share_low:.1%} < {LOW}"
        )


def collapse_line(run: str, modality: str, stats: GateStats) -> str:
    """The warning the report and ``befa train`` print for a collapsed gate."""
    return f"{run}, {modality}: {COLLAPSED} ({stats.describe()})"


def gate_stats(gate: Any) -> GateStats:
    """:class:`GateStats` of one gate tensor, I x d (I >= 1 items)."""
    if gate.dim() != 2 or gate.size(0) < 1:
        raise ValueError(f"gate_stats: a gate is (items, dims), got {tuple(gate.shape)}")
    g = gate.detach().float()
    return GateStats.of(
        mean=float(g.mean()),
        std_items=float(g.std(dim=0, correction=0).mean()),
        share_high=float((g > HIGH).float().mean()),
        share_low=float((g < LOW).float().mean()),
    )


def has_gates(model: Any) -> bool:
    """Whether ``model`` is a +BeFA model with adapters to inspect (adapter 'none': no)."""
    config = getattr(model, "config", None)
    return getattr(config, "adapter", "none") == "befa" and getattr(model, "adapters", None) is not None


def model_gate_stats(model: Any) -> dict[str, GateStats] | None:
    """modality -> :class:`GateStats` of the gate over every item, in eval mode without
    autograd (the model's train/eval mode is restored); None for a model without BeFA."""
    if not has_gates(model):
        return None
    import torch  # here, not at the top: the record side of this module stays torch-free

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = model.befa_inputs()
            return {m: gate_stats(model.adapters[m].gate(x.content)) for m, x in inputs.items() if m in model.adapters}
    finally:
        model.train(was_training)
