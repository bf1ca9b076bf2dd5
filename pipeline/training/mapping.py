"""Cold and new items given representations from their content, after training: ``befa map
RUN``, and automatically after a run on a cold-items split (``pipeline.training.trainer``).

For each mapper method (``models.MAPPERS``: regression, ALDI) the trained model's inference
representations are the teacher: the mapper learns f(content) -> item representation on the
warm items (``models.content_mapper``), and every item without train interactions gets f(x)
in place of the representation its never-trained ID embedding gave it. The model itself is
not changed. Then, from the same representations:

- the **cold setting** (warm items masked, ``pipeline.evaluation.settings``): the mapped cold
  items ranked among themselves (calibration cannot change that order, so none is applied);
- the **hybrid setting** (every item): the mapped items' scores calibrated per user to the
  warm items' scale (``pipeline.evaluation.calibration``), with the cold and warm groups'
  Recall@20 and the share of cold items in the users' top 20, under every calibration mode.
  The ``relevance`` mode's curves are learned here on the VALID part only
  (``pipeline.evaluation.relevance_fit``) and stored with the method, so serving applies them
  without evaluation data; test stays for the honest comparison of the modes.

Written to the run folder, atomically, one method at a time::

    mappers/<method>.safetensors        the mapper's weights (inputs standardised inside)
    mappers/<method>.per_user.parquet   per-user metrics (hybrid + cold setting), for paired tests
    mapping.json                        MappingRecord: per method its fit, config and metrics
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file

from models import MAPPERS, create_mapper
from models.base import Recommender
from models.content_mapper import ContentMapper, MapperData, MapperFit
from models.id_dropout import item_ids_masked
from pipeline.evaluation.calibration import QuantileCalibration
from pipeline.evaluation.content_blend import BLEND_WEIGHTS, ContentBlend
from pipeline.evaluation.metrics import SELECTION_METRIC
from pipeline.evaluation.relevance import RelevanceCurves
from pipeline.evaluation.relevance_fit import fit_relevance
from pipeline.evaluation.settings import merge_per_user, setting_evaluators
from pipeline.training.checkpoints import save_per_user
from pipeline.training.prepare import PreparedData
from pipeline.training.record import ItemGroupMetrics, item_group_metrics, now, setting_metrics
from storage.atomic import atomic_path, write_json

MAPPING = "mapping.json"
MAPPER_DIR = "mappers"
DEFAULT_METHODS: tuple[str, ...] = ("regression", "aldi")
# the first is the default (calibration.py); relevance needs its curves, else expected is
CALIBRATION_MODES: tuple[str, ...] = ("relevance", "expected", "quantile")
FALLBACK_MODE = "expected"
CALIBRATION_SHARE = 0.2  # warm items held out of the mapper's training, to calibrate its scores on
# relevance mode's default warm budget: new items may cost the warm items at most this share of their
# VALID hybrid Recall@20 (fit_warm_budget); issue #22's target
WARM_BUDGET = 0.02
BUDGET_STEPS = 7  # bisection halvings of the relevance scale: 1/128 resolution


def calibration_items(warm: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(I,) bool: a seeded CALIBRATION_SHARE of the warm items, held out of the mapper's fit so
    that its scores on them are as uncertain as on a new item (``pipeline.evaluation.calibration``);
    every warm item when there are fewer than 10."""
    items = warm.nonzero().flatten()
    if items.numel() < 10:
        return warm.clone()
    g = torch.Generator().manual_seed(seed)
    pick = items[torch.randperm(items.numel(), generator=g)[: max(2, round(CALIBRATION_SHARE * items.numel()))]]
    out = torch.zeros_like(warm)
    out[pick.to(warm.device)] = True
    return out


class MappedMethod(BaseModel):
    """One mapper method on one run."""

    method: str
    config: dict[str, Any]
    fit: dict[str, Any]  # models.content_mapper.MapperFit
    mapped_items: int  # items without train interactions given f(x)
    in_dims: dict[str, int]  # modality -> feature width the mapper reads
    out_dim: int
    calibration: str = "expected"  # pipeline.evaluation.calibration's mode (the default one evaluated)
    seed: int = 0  # of the fit and of the calibration hold-out (calibration_items)
    hybrid: dict[str, dict[str, float]] = Field(default_factory=dict)  # part -> overall metrics
    hybrid_groups: dict[str, dict[str, ItemGroupMetrics]] = Field(default_factory=dict)  # part -> group -> metrics
    cold_setting: dict[str, ItemGroupMetrics] = Field(default_factory=dict)  # part -> metrics
    # calibration mode -> part -> group -> metrics: the hybrid setting under each mode, to weigh
    # how many cold items reach the lists against what the warm items lose
    hybrid_by_calibration: dict[str, dict[str, dict[str, ItemGroupMetrics]]] = Field(default_factory=dict)
    # relevance mode's curves, learned on valid (pipeline.evaluation.relevance); None in older records
    relevance: RelevanceCurves | None = None
    # the content floor's share w in the mapped items' raw score (pipeline.evaluation.content_blend),
    # chosen on VALID cold-setting Recall@20; 0 (the mapper alone) in older records
    cbf_weight: float = 0.0
    blend_valid: dict[str, float] = Field(default_factory=dict)  # str(w) -> valid cold-setting Recall@20


class MappingRecord(BaseModel):
    """``mapping.json``: every mapper method fitted to one run."""

    run_dir: str
    model: str
    created_at: str = Field(default_factory=now)
    methods: dict[str, MappedMethod] = Field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: str | Path) -> "MappingRecord | None":
        path = Path(run_dir) / MAPPING
        return cls.model_validate(json.loads(path.read_text())) if path.exists() else None


def mapper_data(model: Recommender, prepared: PreparedData) -> MapperData:
    """The trained model's representations (never-trained items as evaluation reads them) and
    the train interactions."""
    train = prepared.train
    if not train.features:
        raise ValueError(f"{model.name} has no content features: there is nothing to map new items from")
    model.eval()
    with torch.no_grad(), item_ids_masked(model, model.id_keep()):
        user_emb, item_emb = model.inference_embeddings()
    warm = torch.bincount(train.train_items, minlength=train.num_items)[: train.num_items] > 0
    return MapperData(
        features={m: x.float() for m, x in train.features.items()},
        user_emb=user_emb.float().detach(),
        item_emb=item_emb.float().detach(),
        warm=warm,
        train_users=train.train_users,
        train_items=train.train_items,
    )


def fit_mapper(
    method: str, data: MapperData, overrides: dict[str, Any] | None = None, seed: int = 0
) -> tuple[ContentMapper, MapperFit]:
    """A mapper of ``method`` fitted to ``data``: (mapper, MapperFit)."""
    mapper = create_mapper(method, {m: x.size(1) for m, x in data.features.items()}, data.item_emb.size(1), overrides)
    mapper.to(data.item_emb.device)
    return mapper, mapper.fit(data, seed=seed)


@torch.no_grad()
def mapped_items(mapper: ContentMapper, data: MapperData) -> tuple[torch.Tensor, torch.Tensor]:
    """(item representations with every non-warm row replaced by f(x), f(x) for every item)."""
    mapped = mapper(data.features).to(data.item_emb.dtype)
    items = data.item_emb.clone()
    items[~data.warm] = mapped[~data.warm]
    return items, mapped


def choose_blend(blend: ContentBlend, evaluator: Any) -> tuple[float, dict[str, float]]:
    """The content floor's share w with the best VALID cold-setting Recall@20 over
    ``BLEND_WEIGHTS`` (ties: the smaller w), and each w's value; (0, {}) without cold items in valid."""
    view = setting_evaluators(evaluator).get("cold")
    if view is None or "valid" not in view.heldout or int(view.heldout["valid"].items.numel()) == 0:
        return 0.0, {}
    valid = {}
    for weight in BLEND_WEIGHTS:
        users, items = blend.sides(weight)
        valid[weight] = view.evaluate(users, items, ("valid",))["valid"].metrics[SELECTION_METRIC]
    best = max(BLEND_WEIGHTS, key=lambda w: (valid[w], -w))
    return best, {str(w): float(v) for w, v in valid.items()}


def fit_warm_budget(
    calibration: QuantileCalibration,
    curves: RelevanceCurves,
    evaluator: Any,
    user_emb: torch.Tensor,
    items: torch.Tensor,
    budget: float | None,
) -> None:
    """Set ``curves.scale`` in [0, 1] to the largest (by bisection, ``BUDGET_STEPS`` halvings) whose
    VALID hybrid warm Recall@20 is at least (1 - budget) x that of the lists without the new items
    (in place; nothing without a budget or a warm group). Why: relevance placement maximises expected hits, and on a
    cold-items split a cold item is a held-out positive more often than a warm item of the same
    appeal (all its interactions are held out), so it can take more places than it earns."""
    if budget is None or "warm" not in evaluator.item_groups:
        return

    def warm_recall(rescore: Any) -> float:
        res = evaluator.evaluate(user_emb, items, ("valid",), rescore=rescore)["valid"]
        group = res.groups.get("warm")
        return float(group.metrics[SELECTION_METRIC]) if group is not None else 0.0

    def without_new(users: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, calibration.new] = float("-inf")
        return scores

    floor = (1 - budget) * warm_recall(without_new)
    mode, calibration.mode = calibration.mode, "relevance"
    curves.warm_budget = budget

    def fits(scale: float) -> bool:
        curves.scale = scale
        return warm_recall(calibration.rescore) >= floor

    # bisection: a larger scale lets more new items in, so the warm recall falls (monotone up to noise)
    lo, hi = (1.0, 1.0) if fits(1.0) else (0.0, 1.0)
    for _ in range(BUDGET_STEPS if lo < hi else 0):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    curves.scale = lo
    calibration.mode = mode


def evaluate_mapped(
    method: str,
    mapper: ContentMapper,
    fit: MapperFit,
    data: MapperData,
    prepared: PreparedData,
    run_dir: Path,
    warm_budget: float | None = WARM_BUDGET,
) -> MappedMethod:
    """The cold and hybrid settings with the mapped items (blended with the content floor at the
    share chosen on valid, ``choose_blend``), and the per-user table."""
    items, mapped = mapped_items(mapper, data)
    new = ~data.warm
    calib = data.warm & ~data.fit_mask if data.fit is not None else data.warm
    evaluator = prepared.evaluator
    blend = ContentBlend(data.user_emb, mapped, data.features, data.train_users, data.train_items, data.warm)
    weight, blend_valid = choose_blend(blend, evaluator)
    mapped_users, mapped_side = blend.sides(weight)
    calibration = QuantileCalibration(  # tables built once
        data.user_emb, data.item_emb, mapped_side, calib, new, mapped_users=mapped_users
    )
    curves = None
    if "valid" in evaluator.heldout:  # learned on valid only; test stays for the comparison below
        valid = evaluator.heldout["valid"]
        curves = fit_relevance(calibration, data.item_emb, mapped_side, data.warm, calib, evaluator.train, valid)
    if curves is not None:
        calibration.use_relevance(curves, evaluator.train)
        fit_warm_budget(calibration, curves, evaluator, data.user_emb, items, warm_budget)
    modes = [m for m in CALIBRATION_MODES if m != "relevance" or curves is not None]
    by_mode = {}
    for mode in modes:  # the default first: it is the one the per-user table keeps
        calibration.mode = mode  # the modes share the per-user tables; only the read-out differs
        by_mode[mode] = evaluator.evaluate(data.user_emb, items, ("valid", "test"), rescore=calibration.rescore)
    hybrid = by_mode[modes[0]]
    views = setting_evaluators(evaluator)
    cold = {"cold": views["cold"].evaluate(mapped_users, mapped_side, ("valid", "test"))} if "cold" in views else {}
    merge_per_user(hybrid, cold)
    save_per_user(Path(run_dir) / MAPPER_DIR / f"{method}.per_user.parquet", hybrid)
    return MappedMethod(
        method=method,
        config=mapper.config.model_dump(mode="json"),
        fit=dataclasses.asdict(fit),
        mapped_items=int(new.sum()),
        in_dims={m: int(x.size(1)) for m, x in data.features.items()},
        out_dim=int(data.item_emb.size(1)),
        hybrid={part: dict(r.metrics) for part, r in hybrid.items()},
        hybrid_groups=item_group_metrics(hybrid),
        calibration=modes[0],
        hybrid_by_calibration={mode: item_group_metrics(res) for mode, res in by_mode.items()},
        relevance=curves,
        cold_setting=setting_metrics(cold).get("cold", {}),
        cbf_weight=weight,
        blend_valid=blend_valid,
    )


def map_run(
    model: Recommender,
    prepared: PreparedData,
    run_dir: str | Path,
    methods: Sequence[str] = DEFAULT_METHODS,
    overrides: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    warm_budget: float | None = WARM_BUDGET,
) -> MappingRecord:
    """Fit every method to a trained model, evaluate, and write the run's mapping files."""
    run_dir = Path(run_dir)
    unknown = [m for m in methods if m not in MAPPERS]
    if unknown:
        raise ValueError(f"--methods: unknown mapper {unknown[0]!r}; choose from {', '.join(MAPPERS)}")
    data = mapper_data(model, prepared)
    calib = calibration_items(data.warm, seed)
    if not bool(calib.all()):
        data.fit = data.warm & ~calib
    record = MappingRecord.load(run_dir) or MappingRecord(run_dir=str(run_dir), model=model.name)
    (run_dir / MAPPER_DIR).mkdir(parents=True, exist_ok=True)
    for method in methods:
        mapper, fit = fit_mapper(method, data, (overrides or {}).get(method), seed)
        result = evaluate_mapped(method, mapper, fit, data, prepared, run_dir, warm_budget)
        result.seed = seed
        with atomic_path(run_dir / MAPPER_DIR / f"{method}.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in mapper.state_dict().items()}, str(tmp))
        record.methods[method] = result
        record.created_at = now()
        write_json(run_dir / MAPPING, record.model_dump(mode="json"))
    return record


def load_mapper(run_dir: str | Path, method: str) -> ContentMapper:
    """A fitted mapper back from a run folder (for serving new items)."""
    record = MappingRecord.load(run_dir)
    if record is None or method not in record.methods:
        raise FileNotFoundError(f"{run_dir}: no {method!r} mapper (run `befa map {run_dir}` first)")
    entry = record.methods[method]
    mapper = create_mapper(method, entry.in_dims, entry.out_dim, entry.config)
    mapper.load_state_dict(load_file(str(Path(run_dir) / MAPPER_DIR / f"{method}.safetensors")))
    return mapper.eval()
