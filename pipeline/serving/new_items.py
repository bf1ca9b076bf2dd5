"""New items in served lists: their representations from the run's content mapper, their
scores calibrated to the warm items', and a guaranteed share of the list.

An item with no behaviour in the run (added to the catalog after training, or held out as
cold) has no trained ID embedding. When the run has content mappers (``befa map``,
``pipeline.training.mapping``) the servable replaces such an item's representation by the
mapper's f(content), and ranks it with its score calibrated per user to the warm items'
scale (``pipeline.evaluation.calibration``). The default mode, ``relevance``, applies the
curves ``befa map`` learned on the split's valid part and stored in ``mapping.json``: a new
item enters a list where it is likelier a hit than the warm item it displaces. A run whose
``mapping.json`` lacks the curves (mapped before they existed) falls back to ``expected``
(the mapper's scores on held-out warm items), and says so in one line
(``NewItemScoring.calibration_note``).

The mapper: ``auto`` takes the method with the best VALID cold-setting Recall@20 recorded in
``mapping.json`` (never test), or the regression mapper when the run's split had no cold
items to judge them on; a method name forces one; ``none`` serves the model's own
representations, as befa did before mappers.

Slots (``new_item_slots``): each list holds at least that many new items when enough are
allowed (not seen, in the catalog, in the candidates): where the calibrated ranking put
fewer, the best remaining new items replace the lowest-ranked others, and the list is
re-ordered by score, so a guaranteed item sits where its score puts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.evaluation.calibration import QuantileCalibration
from pipeline.evaluation.content_blend import blended_from_history
from pipeline.evaluation.evaluator import UserItems, topk_items
from pipeline.features.bundle import FeatureBundle
from pipeline.training.api import load_trained
from pipeline.training.mapping import (
    CALIBRATION_MODES,
    FALLBACK_MODE,
    MappedMethod,
    MappingRecord,
    calibration_items,
    load_mapper,
    map_run,
)
from pipeline.training.record import ItemGroupMetrics, RunRecord


def choose_mapper(run_dir: str | Path, wanted: str = "auto", mapping: MappingRecord | None = None) -> str | None:
    """The mapper method to serve with, or None for the model's own content path.

    ``auto`` compares, on VALID cold-setting Recall@20 (never test), the model as trained
    (``RunRecord.settings``) with each fitted mapper (``mapping.json``), and takes the best; a
    run whose split had no cold items has nothing to judge on and keeps the model's own path
    (every content model serves new items through its content, ``Recommender.serves_new_items``).
    A method name forces that mapper; ``none`` forces the model's own path. ``mapping``: the
    run's ``mapping.json`` when the caller has read it already."""
    if wanted == "none":
        return None
    record = mapping or MappingRecord.load(run_dir)
    if wanted != "auto":
        if record is None or wanted not in record.methods:
            raise FileNotFoundError(f"{run_dir}: no {wanted!r} mapper; run `befa map {run_dir}` first")
        return wanted
    if record is None or not record.methods:
        return None

    def valid_cold(entry: ItemGroupMetrics | None) -> float:
        value = entry.metrics.get("recall@20") if entry is not None else None
        return -1.0 if value is None else value

    scored = {m: valid_cold(e.cold_setting.get("valid")) for m, e in sorted(record.methods.items())}
    trained = valid_cold(RunRecord.load(run_dir).settings.get("cold", {}).get("valid"))
    best = max(scored, key=scored.__getitem__)
    return best if scored[best] > max(trained, 0.0) else None


def top_with_slots(scores: Tensor, k: int, new: Tensor, slots: int) -> tuple[Tensor, Tensor]:
    """(B, k) item indices and their scores: the top ``k`` by score, holding at least ``slots``
    items of ``new`` (a (I,) bool) per row when that many have a finite score, ordered by
    score. A score of -inf marks an empty place (fewer than k items allowed)."""
    top = topk_items(scores, k)
    if slots <= 0 or not bool(new.any()):
        return top, scores.gather(1, top)
    slots = min(slots, k)
    best_new = topk_items(scores.masked_fill(~new, float("-inf")), slots)
    guaranteed = torch.isfinite(scores.gather(1, best_new)) & new[best_new]
    candidates = torch.cat([best_new, top], dim=1)
    key = scores.gather(1, candidates)
    # a guaranteed new item outranks every other candidate; its repeat among the top is dropped
    key[:, :slots] = torch.where(guaranteed, float("inf"), float("-inf"))
    repeat = (top.unsqueeze(2) == torch.where(guaranteed, best_new, -1).unsqueeze(1)).any(2)
    key[:, slots:] = key[:, slots:].masked_fill(repeat, float("-inf"))
    pick = key.topk(k, dim=1).indices
    chosen = candidates.gather(1, pick)
    values = scores.gather(1, chosen).masked_fill(key.gather(1, pick) == float("-inf"), float("-inf"))
    order = values.argsort(dim=1, descending=True, stable=True)
    return chosen.gather(1, order), values.gather(1, order)


def warm_items(train_history: UserItems, num_items: int) -> Tensor:
    """(I,) bool: the items with at least one train interaction in the run's split."""
    return torch.bincount(train_history.items, minlength=num_items)[:num_items] > 0


@dataclass
class NewItemScoring:
    """How the items without behaviour are served (``apply_mapper``); the fields are ``Servable``'s."""

    no_behaviour: Tensor  # (I,) bool: every item the run never trained on
    calibration: QuantileCalibration | None = None
    mapper: str | None = None  # None: the model's own content path
    calibration_note: str | None = None  # one line when the calibration asked for could not be used


def calibration_mode(entry: MappedMethod, wanted: str | None, where: str | Path) -> tuple[str, str | None]:
    """(the mode to serve with, a one-line note when it is not the one asked for): ``wanted``
    (default: the current default mode), or ``expected`` when relevance's curves are missing."""
    mode = wanted or CALIBRATION_MODES[0]
    if mode not in CALIBRATION_MODES:
        raise ValueError(f"--calibration must be one of {', '.join(CALIBRATION_MODES)}; got {mode!r}")
    if mode == "relevance" and entry.relevance is None:
        return FALLBACK_MODE, (
            f"{where}: mapping.json has no relevance curves for the {entry.method} mapper (mapped before "
            f"they existed); new items calibrated with {FALLBACK_MODE!r} instead (`befa map` refits them)"
        )
    return mode, None


def apply_mapper(
    run_dir: str | Path,
    wanted: str,
    features: FeatureBundle,
    user_emb: Tensor,
    item_emb: Tensor,
    train_history: UserItems,
    calibration: str | None = None,
) -> NewItemScoring:
    """The items without behaviour (every item the run never trained on: new rows and cold
    ones), and, when a mapper is chosen (``choose_mapper``), their representation replaced in
    place by its f(content) and their scores calibrated (mode ``calibration``, default the
    current default, ``calibration_mode``)."""
    warm = warm_items(train_history, item_emb.size(0)).to(item_emb.device)
    mapping = MappingRecord.load(run_dir) if features.features and wanted != "none" else None
    method = choose_mapper(run_dir, wanted, mapping) if features.features else None
    if method is None or mapping is None or int(warm.sum()) < 2 or bool(warm.all()):
        return NewItemScoring(~warm)
    mapper = load_mapper(run_dir, method).to(item_emb.device)
    with torch.no_grad():
        mapped = mapper({m: x.to(item_emb.device) for m, x in features.features.items()}).float()
    entry = mapping.methods[method]
    mode, note = calibration_mode(entry, calibration, run_dir)
    calib = calibration_items(warm, entry.seed)  # the warm items the mapper was calibrated on
    # the raw mapped score, blended with the content floor at the share befa map chose (0: the mapper alone)
    mapped_users, mapped_side = blended_from_history(
        user_emb, mapped, features.features, train_history, warm, entry.cbf_weight
    )
    scoring = QuantileCalibration(
        user_emb,
        item_emb,
        mapped_side,
        calib,
        ~warm,
        mode=mode,
        mapped_users=mapped_users,  # type: ignore[arg-type]
    )
    if mode == "relevance" and entry.relevance is not None:
        scoring.use_relevance(entry.relevance, train_history)  # the warm ranks mask the train positives
    item_emb[~warm] = mapped[~warm].to(item_emb.dtype)
    return NewItemScoring(~warm, scoring, method, note)


def fit_missing_mappers(
    run_dir: str | Path, trained: FeatureBundle | None, catalog: Any, split: Any, device: Any
) -> MappingRecord | None:
    """A run asked to serve through a mapper it does not have yet: fit them now (``befa map``,
    seconds; written to the run folder, so once). None when nothing was fitted."""
    if trained is None or not trained.features or MappingRecord.load(run_dir) is not None:
        return None  # nothing to map from, or fitted already
    run = load_trained(run_dir, catalog=catalog, split=split, features=trained, device=device)
    return map_run(run.model, run.prepared, run_dir)
