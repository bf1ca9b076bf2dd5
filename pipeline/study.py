"""The BeFA study: does the adapter help on *this* catalog, where, by how much, at what cost.

:func:`run_study` (``befa study``; the ``study`` option of ``befa/full-pipeline``) does:

1. ingest / extract / split with the full pipeline's own steps (``pipeline.full_pipeline``);
2. **search** (VALID only): per content model and adapter (base, +BeFA), up to
   ``max_trials`` configurations (and at most ``max_minutes`` per search) drawn from the
   model's documented grid (``Model.GRID``), crossed for +BeFA with ``befa_grid``
   (``befa.t`` x ``befa.dropout``, the authors' t and dropout grid). The model's default
   configuration is always tried first; if the grid holds more points than the budget,
   the rest are a seeded random sample of the grid (random search). Base and +BeFA get the
   *same* number of trials and the same model hyper-parameters trial by trial
   (:func:`search_plan`), +BeFA adding a sampled t and dropout to each. The winner is the trial with the best valid
   Recall@20 at its best epoch (``pipeline.grid.select_on_valid``; test metrics of the
   trials are never read). Trials run with the first seed;
3. **main table**: the winner of each (model, adapter) is trained with every seed
   (the first-seed run is the search trial itself, not repeated); test metrics at the
   best valid epoch, mean ± std over seeds; relative gain of +BeFA; paired per-user
   significance tests (``pipeline.study_stats``, Holm-adjusted over models x metrics);
   parameter overhead with and without the raw feature tables; seconds per training epoch;
4. **decoupling-space sweep**: +BeFA winner of ``focus_model`` with ``befa.t`` in
   ``sweep_t`` (0.125 ... 8), every seed;
5. **modality ablation**: image only, text only, both (base and +BeFA, every seed);
6. **sparsity sweep**: 100 / 50 / 25 % of each user's train interactions
   (``Split.subsample_train``; valid and test unchanged), base and +BeFA, every seed;
7. **what BeFA changes** (``pipeline.adapter_inspect``): gate heatmaps, cosine histograms,
   top-10 of base vs +BeFA for a few users with posters;
8. the report (``pipeline.study_report``): ``report.html``, ``report.md``,
   ``results.parquet``, PNG plots.

Runs are content-addressed: ``runs/<model>-<adapter>-<hash>-s<seed>`` where the hash covers
the model config, the modalities, the split and the training budget; a run that already
finished is reused (a study interrupted and restarted resumes, and the sweep/ablation/
sparsity points that equal a main-table configuration are not trained twice).

Folder: ``$BEFA_HOME/runs/studies/<name>/``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
import time
from pathlib import Path
from typing import Any, Callable, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.settings import Settings, get_settings
from storage.atomic import write_json

DEFAULT_BEFA_GRID: dict[str, list[Any]] = {"befa.t": [1.0, 2.0, 4.0, 8.0], "befa.dropout": [0.1, 0.3, 0.5, 0.7]}
DEFAULT_SWEEP_T = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
DEFAULT_MODALITY_SETS = [["image"], ["text"], ["image", "text"]]
DEFAULT_FRACTIONS = [1.0, 0.5, 0.25]
PAPER_CLAIM = {"recall@20": 0.0907, "ndcg@20": 0.1102}
HEADLINE = ("recall@20", "ndcg@20")
ADAPTERS = ("none", "befa")


class StudyError(ValueError):
    """Study parameters that cannot run (named, before any work)."""


class StudyParams(BaseModel):
    """One study. Data fields mirror ``PipelineParams`` (same meaning)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="study folder name; default <dataset>-<UTC time>")
    # -- data (as the full pipeline) --
    dataset: str = "movielens-100k-posters"
    importer: str | None = None
    ingest: Literal["auto", "always", "never"] = "auto"
    ingest_options: dict[str, Any] = Field(default_factory=dict)
    encoder: str | dict[str, str] = Field(
        "image=clip:ViT-B-32@random,text=minilm",
        description="encoder spec; CLIP at random init unless a checkpoint is given (labelled in the report)",
    )
    split_kind: Literal["random", "temporal"] = "random"
    split_seed: int = 2024
    k_core: int | None = Field(None, ge=1)
    device: str | None = None
    num_threads: int | None = Field(None, ge=1, description="CPU threads for training (default: every usable core)")
    extract_batch_size: int | None = Field(None, ge=1)
    # -- training --
    models: list[str] = Field(default_factory=lambda: ["bm3", "lattice", "freedom", "mgcn"])
    seeds: list[int] = Field(default_factory=lambda: [999, 1000, 1001], description="training seeds (default 3)")
    epochs: int = Field(1000, ge=1, description="max epochs per run")
    patience: int = Field(10, ge=1)
    model_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="model (or '*') -> fixed config overrides applied to every run (e.g. embedding_dim)"
    )
    # -- search (valid only) --
    grid: Literal["model", "none"] | dict[str, dict[str, list[Any]]] = Field(
        "model", description="'model': each model's GRID; 'none': defaults only; or model -> {field: values}"
    )
    befa_grid: dict[str, list[Any]] = Field(default_factory=lambda: dict(DEFAULT_BEFA_GRID))
    max_trials: int = Field(4, ge=1, description="configurations tried per model and adapter")
    max_minutes: float | None = Field(None, gt=0, description="stop starting new trials of one search after this")
    search_seed: int = 0
    # -- experiments --
    focus_model: str = Field("freedom", description="model of the sweep, ablation, sparsity and inspection")
    sweep_t: list[float] | None = Field(default_factory=lambda: list(DEFAULT_SWEEP_T), description="None: no sweep")
    modality_sets: list[list[str]] | None = Field(default_factory=lambda: [list(s) for s in DEFAULT_MODALITY_SETS])
    train_fractions: list[float] | None = Field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    experiment_seeds: int | None = Field(None, ge=1, description="seeds for sweep/ablation/sparsity (default: all)")
    inspect_items: int = Field(24, ge=1)
    inspect_users: int = Field(4, ge=0)
    pooling: Literal["user_mean", "concat"] = "user_mean"
    alpha: float = Field(0.05, gt=0, lt=1)

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("models: give at least one content model")
        return list(dict.fromkeys(m.strip().lower() for m in v))

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("seeds: give at least one seed")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"name {v!r}: letters, digits, '.', '_' or '-' only (it names a folder)")
        return v

    @field_validator("train_fractions")
    @classmethod
    def _fractions(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            bad = [f for f in v if not 0 < f <= 1]
            if bad:
                raise ValueError(f"train_fractions must be in (0, 1], got {bad}")
        return v

    @field_validator("sweep_t")
    @classmethod
    def _sweep(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(t <= 0 for t in v):
            raise ValueError(f"sweep_t values must be > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _focus(self) -> "StudyParams":
        if self.focus_model not in self.models:
            raise ValueError(f"focus_model {self.focus_model!r} must be one of models {self.models}")
        return self

    @property
    def experiment_seed_list(self) -> list[int]:
        return self.seeds[: self.experiment_seeds] if self.experiment_seeds else list(self.seeds)

    def fixed_overrides(self, model: str) -> dict[str, Any]:
        out = dict(self.model_overrides.get("*", {}))
        out.update(self.model_overrides.get(model, {}))
        return out

    def pipeline_params(self) -> Any:
        from pipeline.full_pipeline import PipelineParams

        return PipelineParams(
            dataset=self.dataset, importer=self.importer, ingest=self.ingest, ingest_options=self.ingest_options,
            encoder=self.encoder, models=self.models, adapters=["none", "befa"], epochs=self.epochs,
            patience=self.patience, seed=self.seeds[0], split_kind=self.split_kind, split_seed=self.split_seed,
            k_core=self.k_core, device=self.device, extract_batch_size=self.extract_batch_size,
            model_overrides=self.model_overrides, verify_checkpoints=False, run_name=self.name,
        )


def study_params_from_pipeline(pipeline_params: Any, **study_fields: Any) -> StudyParams:
    """StudyParams for the full pipeline's ``study`` option: the pipeline's data, encoder,
    split, device, epochs, patience, seed (first of 3) and fixed overrides, plus any study
    field given here (``max_trials``, ``focus_model``, ...). Content-free models in the
    pipeline's list (lightgcn, mostpop) are left out: BeFA has nothing to adapt there."""
    from models import MODELS

    p = pipeline_params
    models = [m for m in p.models if m in MODELS and MODELS[m].uses_content]
    fields: dict[str, Any] = dict(
        name=p.run_name, dataset=p.dataset, importer=p.importer, ingest=p.ingest, ingest_options=p.ingest_options,
        encoder=p.encoder, split_kind=p.split_kind, split_seed=p.split_seed, k_core=p.k_core, device=p.device,
        extract_batch_size=p.extract_batch_size, epochs=p.epochs, patience=p.patience,
        seeds=[p.seed, p.seed + 1, p.seed + 2], model_overrides=p.model_overrides,
    )
    if models:
        fields["models"] = models
        fields["focus_model"] = "freedom" if "freedom" in models else models[0]
    fields.update(study_fields)
    return StudyParams.model_validate(fields)


class StudyResult(BaseModel):
    folder: str
    params: dict[str, Any]
    verdict: str
    main: list[dict[str, Any]]  # per model x adapter x metric: mean, std, n
    significance: list[dict[str, Any]]
    files: dict[str, str]
    timings: dict[str, float]
    runs_trained: int
    runs_reused: int


# -- validation ----------------------------------------------------------------------
def model_grid(params: StudyParams, model: str) -> dict[str, list[Any]]:
    """The model's search grid (its documented ``GRID``, a custom one, or none)."""
    from models import MODELS

    if params.grid == "none":
        return {}
    if isinstance(params.grid, dict):
        return dict(params.grid.get(model, {}))
    return dict(getattr(MODELS[model], "GRID", {}) or {})


def validate_study(params: StudyParams | dict[str, Any], settings: Settings | None = None) -> StudyParams:
    """Check everything cheap before any work; raise StudyError naming the problem."""
    from models import CONTENT_MODELS, MODELS
    from pipeline.full_pipeline import PipelineError, validate_params
    from pipeline.training import build_config

    settings = settings or get_settings()
    if not isinstance(params, StudyParams):
        try:
            params = StudyParams.model_validate(params)
        except ValueError as exc:
            raise StudyError(f"bad study parameters: {exc}") from None
    for m in params.models:
        if m not in MODELS:
            raise StudyError(f"unknown model {m!r}; the study compares content models {list(CONTENT_MODELS)}")
        if not MODELS[m].uses_content:
            raise StudyError(f"model {m!r} uses no content features: BeFA has nothing to adapt (use {list(CONTENT_MODELS)})")
    for m in params.models:
        grids = {"none": model_grid(params, m), "befa": {**model_grid(params, m), **params.befa_grid}}
        for adapter, grid in grids.items():
            for key, values in grid.items():
                if isinstance(values, (str, bytes)) or not isinstance(values, list) or not values:
                    raise StudyError(f"grid for {m}: {key!r} must be a non-empty list, got {values!r}")
                try:  # every value must make a valid config
                    for v in values:
                        build_config(MODELS[m], {**params.fixed_overrides(m), "adapter": adapter, key: v})
                except (ValueError, KeyError) as exc:
                    raise StudyError(f"grid for {m} ({adapter}): {key}: {exc}") from None
    for s in params.modality_sets or []:
        bad = [x for x in s if x not in ("image", "text")] or ([] if s else ["(empty)"])
        if bad:
            raise StudyError(f"modality_sets: {bad[0]!r} is not a modality (image, text)")
    try:
        validate_params(params.pipeline_params(), settings)
    except PipelineError as exc:
        raise StudyError(str(exc)) from None
    return params


# -- runs ------------------------------------------------------------------------------
class RunSpec(BaseModel):
    """One training run of the study: what it is, not where (the folder is derived)."""

    model: str
    overrides: dict[str, Any]
    modalities: list[str]
    split: str  # split parquet path
    seed: int
    experiment: str
    setting: str

    @property
    def adapter(self) -> str:
        return self.overrides.get("adapter", "none")


class _Runner:
    """Trains (or reuses) content-addressed runs; keeps the counts and the log."""

    def __init__(self, params: StudyParams, settings: Settings, folder: Path, catalog_dir: str, features: Any, log: Callable[[str], None]):
        self.params, self.settings, self.folder = params, settings, folder
        self.catalog_dir, self.features, self.log = catalog_dir, features, log
        self.trained = self.reused = 0
        self.seconds = 0.0

    def run_dir(self, spec: RunSpec) -> Path:
        # the split file name carries its content (e.g. random-s2024, ...-train50); runs of
        # one study share one catalog, so name + config + modalities + budget identify a run
        key = json.dumps(
            {
                "model": spec.model,
                "overrides": spec.overrides,
                "modalities": sorted(spec.modalities),
                "split": Path(spec.split).name,
                "epochs": self.params.epochs,
                "patience": self.params.patience,
                "snapshots": {m: self.features[2][m] for m in sorted(spec.modalities)},
            },
            sort_keys=True,
            default=str,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        return self.folder / "runs" / f"{spec.model}-{spec.adapter}-{digest}-s{spec.seed}"

    def train(self, spec: RunSpec) -> dict[str, Any]:
        """The run's record (dict), training it unless an identical finished run exists."""
        from pipeline.reports import load_run
        from pipeline.training import train_model

        run_dir = self.run_dir(spec)
        record_path = run_dir / "run.json"
        if record_path.exists():
            rec = json.loads(record_path.read_text())
            if rec.get("status") in ("early_stopped", "max_epochs", "evaluated_only") and (run_dir / "per_user.parquet").exists():
                self.reused += 1
                return load_run(run_dir)
        feats, masks, snaps = self.features
        sub = ({m: feats[m] for m in spec.modalities}, {m: masks[m] for m in spec.modalities if m in masks}, {m: snaps[m] for m in spec.modalities})
        start = time.perf_counter()
        train_model(
            self.catalog_dir, spec.split, sub, spec.model, overrides=spec.overrides, run_dir=run_dir, seed=spec.seed,
            device=self.params.device, max_epochs=self.params.epochs, patience=self.params.patience,
            resume=(run_dir / "last.pt").exists() and record_path.exists(), quiet=True, overwrite=True,
            num_threads=self.params.num_threads,
            graph_cache_dir=self.settings.home / "graph-cache",
        )
        took = time.perf_counter() - start
        self.seconds += took
        self.trained += 1
        rec = load_run(run_dir)
        self.log(
            f"  {spec.experiment} {spec.setting}: {spec.model} {'+BeFA' if spec.adapter == 'befa' else 'base'} seed {spec.seed}: "
            f"{len(rec.get('epochs') or [])} epochs, valid R@20 {rec['best_valid'].get('recall@20', float('nan')):.4f} ({took:.0f} s)"
        )
        return rec


# -- search ----------------------------------------------------------------------------
def search_points(grid: dict[str, list[Any]], max_trials: int, seed: int) -> list[dict[str, Any]]:
    """Default point first, then a seeded random sample of the grid, ``max_trials`` in all."""
    from pipeline.grid import grid_points

    points = grid_points(grid) if grid else []
    rng = random.Random(seed)
    rng.shuffle(points)
    return ([{}] + points)[:max_trials]


def _resolved(model: str, overrides: dict[str, Any]) -> str:
    from pipeline.training import build_config, resolve_model

    return build_config(resolve_model(model), overrides).model_dump_json()


def search_plan(params: StudyParams, model: str, adapter: str, spare: int = 4) -> list[dict[str, Any]]:
    """The points one search tries, in order (more than ``max_trials``: spares replace duplicates).

    Paired design: the k-th +BeFA trial uses the same model hyper-parameters as the k-th base
    trial (default first, then the same seeded sample of the model's grid), combined with
    the k-th point of a seeded sample of ``befa_grid`` (BeFA's defaults first). So both arms
    explore the same base-model configurations within the same budget, and +BeFA's extra
    freedom is only its own t and dropout."""
    n = params.max_trials * spare
    model_pts = search_points(model_grid(params, model), n, params.search_seed)
    if adapter == "none":
        return model_pts
    befa_pts = search_points(params.befa_grid, n, params.search_seed + 1)
    return [{**mp, **befa_pts[k % len(befa_pts)]} for k, mp in enumerate(model_pts)] or [{}]


def run_search(runner: _Runner, model: str, adapter: str, split: str, modalities: list[str]) -> dict[str, Any]:
    """Valid-only search for one (model, adapter); returns the winner and every trial's valid metrics."""
    from pipeline.grid import select_on_valid

    p = runner.params
    grid = model_grid(p, model) if adapter == "none" else {**model_grid(p, model), **p.befa_grid}
    fixed = {**p.fixed_overrides(model), "adapter": adapter}
    trials, seen = [], set()
    start = time.perf_counter()
    for point in search_plan(p, model, adapter):
        if len(trials) >= p.max_trials:
            break
        overrides = {**fixed, **point}
        key = _resolved(model, overrides)
        if key in seen:  # the default may equal a grid point
            continue
        if trials and p.max_minutes is not None and time.perf_counter() - start > 60 * p.max_minutes:
            runner.log(f"  search {model} {adapter}: time budget of {p.max_minutes} min reached after {len(trials)} trials")
            break
        seen.add(key)
        rec = runner.train(RunSpec(model=model, overrides=overrides, modalities=modalities, split=split, seed=p.seeds[0], experiment="search", setting=json.dumps(point) if point else "default"))
        trials.append({"point": point, "overrides": overrides, "valid": dict(rec.get("best_valid") or {}), "run_dir": rec["run_dir"], "best_epoch": rec.get("best_epoch")})
    winner = select_on_valid([t["valid"] for t in trials])
    return {"model": model, "adapter": adapter, "grid": grid, "trials": trials, "winner": winner, "winner_overrides": trials[winner]["overrides"], "seconds": time.perf_counter() - start}


# -- results ---------------------------------------------------------------------------
RESULT_COLUMNS = [
    "experiment", "setting", "model", "adapter", "seed", "split", "metric", "value",
    "t", "modalities", "train_fraction", "best_epoch", "epochs_run", "train_epoch_s", "run_dir",
]


def result_rows(rec: dict[str, Any], spec: RunSpec, extra: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric (test and valid at the best valid epoch) of one run."""
    rows = []
    wall = rec.get("wall") or {}
    base = {
        "experiment": spec.experiment,
        "setting": spec.setting,
        "model": spec.model,
        "adapter": spec.adapter,
        "seed": spec.seed,
        "t": float(rec["config"].get("befa", {}).get("t")) if spec.adapter == "befa" else None,
        "modalities": "+".join(sorted(spec.modalities)),
        "train_fraction": extra.get("train_fraction", 1.0),
        "best_epoch": rec.get("best_epoch"),
        "epochs_run": len(rec.get("epochs") or []),
        "train_epoch_s": wall.get("train_epoch_mean_s"),
        "run_dir": rec["run_dir"],
    }
    for split_name, metrics in (("test", rec.get("test") or {}), ("valid", rec.get("best_valid") or {})):
        for metric, value in sorted(metrics.items()):
            rows.append({**base, "split": split_name, "metric": metric, "value": float(value)})
    return rows


def results_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    frame["best_epoch"] = frame["best_epoch"].astype("Int64")
    frame["t"] = frame["t"].astype(float)
    frame["train_epoch_s"] = frame["train_epoch_s"].astype(float)
    return frame


def summarise(frame: pd.DataFrame, by: list[str], split: str = "test") -> pd.DataFrame:
    """mean, std (ddof 1), n over seeds of ``value`` grouped by ``by`` + metric."""
    sub = frame[frame["split"] == split]
    g = sub.groupby([*by, "metric"], sort=False, dropna=False)["value"]
    out = g.agg(mean="mean", std=lambda s: float(s.std(ddof=1)) if len(s) > 1 else 0.0, n="count").reset_index()
    return out


def per_user(run_dir: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(Path(run_dir) / "per_user.parquet").to_pandas()


def significance(
    runs: dict[tuple[str, str], list[dict[str, Any]]], models: list[str], pooling: str, alpha: float
) -> list[dict[str, Any]]:
    """Paired tests per model x headline metric, with Holm-adjusted Wilcoxon p-values."""
    from pipeline.study_stats import holm, paired_frame, paired_test

    out = []
    for model in models:
        base, befa = runs.get((model, "none"), []), runs.get((model, "befa"), [])
        n = min(len(base), len(befa))
        if n == 0:
            continue
        b_tabs, a_tabs = [per_user(r["run_dir"]) for r in base[:n]], [per_user(r["run_dir"]) for r in befa[:n]]
        for metric in HEADLINE:
            test = paired_test(paired_frame(b_tabs, a_tabs, metric), metric, pooling)  # type: ignore[arg-type]
            out.append({"model": model, **test.to_dict()})
    adjusted = holm([r["p_wilcoxon"] for r in out])
    for r, p in zip(out, adjusted):
        r["p_wilcoxon_holm"] = p
        r["significant"] = p is not None and p < alpha
    return out


def user_groups(
    runs: dict[tuple[str, str], list[dict[str, Any]]], models: list[str], split_frame: pd.DataFrame, groups: int = 3
) -> list[dict[str, Any]]:
    """Test Recall@20 / NDCG@20 of base and +BeFA by user activity (train-size terciles)."""
    train = split_frame[split_frame["label"] == 0].groupby("user_idx").size().rename("n_train")
    out = []
    for model in models:
        base, befa = runs.get((model, "none"), []), runs.get((model, "befa"), [])
        n = min(len(base), len(befa))
        if n == 0:
            continue
        from pipeline.study_stats import paired_frame

        b_tabs, a_tabs = [per_user(r["run_dir"]) for r in base[:n]], [per_user(r["run_dir"]) for r in befa[:n]]
        for metric in HEADLINE:
            pairs = paired_frame(b_tabs, a_tabs, metric).groupby("user_idx")[["base", "befa"]].mean()
            pairs = pairs.join(train, how="left").fillna({"n_train": 0})
            ranks = pairs["n_train"].rank(method="first")
            pairs["group"] = pd.qcut(ranks, q=min(groups, len(pairs)), labels=False) if len(pairs) else []
            for g, sub in pairs.groupby("group"):
                lo, hi = int(sub["n_train"].min()), int(sub["n_train"].max())
                b, a = float(sub["base"].mean()), float(sub["befa"].mean())
                out.append({
                    "model": model, "metric": metric, "group": int(g), "train_interactions": f"{lo}-{hi}",
                    "users": int(len(sub)), "base": b, "befa": a, "relative_gain": (a - b) / b if b else None,
                })
    return out


def overhead_rows(main_runs: dict[tuple[str, str], list[dict[str, Any]]], models: list[str]) -> list[dict[str, Any]]:
    """Parameters and seconds per epoch, base vs +BeFA (first seed's records; times: mean over seeds)."""
    rows = []
    for model in models:
        base, befa = main_runs.get((model, "none"), []), main_runs.get((model, "befa"), [])
        if not base or not befa:
            continue
        pb, pa_ = base[0].get("parameters") or {}, befa[0].get("parameters") or {}
        with_b = pb.get("params_base_with_feature_tables", 0)
        without_b = pb.get("params_base_without_feature_tables", 0)
        adapter = pa_.get("params_adapter", 0)
        # totals of what each model holds (trainable + frozen tables)
        total_b_with = with_b
        total_a_with = pa_.get("params_base_with_feature_tables", 0) + adapter
        total_b_without = without_b
        total_a_without = pa_.get("params_base_without_feature_tables", 0) + adapter

        def epoch_s(recs):
            vals = [r.get("wall", {}).get("train_epoch_mean_s") for r in recs]
            vals = [v for v in vals if v is not None]
            return sum(vals) / len(vals) if vals else None

        tb, ta = epoch_s(base), epoch_s(befa)
        rows.append({
            "model": model,
            "adapter_params": int(adapter),
            "base_params_without_tables": int(total_b_without),
            "base_params_with_tables": int(total_b_with),
            "befa_params_without_tables": int(total_a_without),
            "befa_params_with_tables": int(total_a_with),
            "adapter_overhead_without_tables": adapter / total_b_without if total_b_without else None,
            "adapter_overhead_with_tables": adapter / total_b_with if total_b_with else None,
            "net_overhead_without_tables": (total_a_without - total_b_without) / total_b_without if total_b_without else None,
            "net_overhead_with_tables": (total_a_with - total_b_with) / total_b_with if total_b_with else None,
            "epoch_s_base": tb,
            "epoch_s_befa": ta,
            "epoch_time_ratio": ta / tb if ta and tb else None,
            "epochs_base": [len(r.get("epochs") or []) for r in base],
            "epochs_befa": [len(r.get("epochs") or []) for r in befa],
        })
    return rows


def gains_table(summary: pd.DataFrame, models: list[str]) -> list[dict[str, Any]]:
    """Per model and headline metric: mean ± std of base and +BeFA, relative gain of the means."""
    rows = []
    for model in models:
        for metric in HEADLINE:
            get = lambda a: summary[(summary["model"] == model) & (summary["adapter"] == a) & (summary["metric"] == metric)]  # noqa: E731
            b, a = get("none"), get("befa")
            if b.empty or a.empty:
                continue
            bm, am = float(b["mean"].iloc[0]), float(a["mean"].iloc[0])
            rows.append({
                "model": model, "metric": metric,
                "base_mean": bm, "base_std": float(b["std"].iloc[0]),
                "befa_mean": am, "befa_std": float(a["std"].iloc[0]),
                "seeds": int(min(b["n"].iloc[0], a["n"].iloc[0])),
                "relative_gain": (am - bm) / bm if bm else None,
            })
    return rows


def verdict(gains: list[dict[str, Any]], sig: list[dict[str, Any]], alpha: float) -> str:
    """One plain paragraph: did BeFA help here, by how much, against the paper's claim."""
    if not gains:
        return "No model was trained both ways, so the study cannot say whether BeFA helps."
    parts = []
    for metric in HEADLINE:
        vals = [g["relative_gain"] for g in gains if g["metric"] == metric and g["relative_gain"] is not None]
        if vals:
            mean = sum(vals) / len(vals)
            parts.append(f"{metric} {mean * 100:+.2f}% (paper: {PAPER_CLAIM[metric] * 100:+.2f}%)")
    up = sorted({s["model"] for s in sig if s["significant"] and s["mean_diff"] > 0})
    down = sorted({s["model"] for s in sig if s["significant"] and s["mean_diff"] < 0})
    mean_r = [g["relative_gain"] for g in gains if g["metric"] == "recall@20" and g["relative_gain"] is not None]
    avg = sum(mean_r) / len(mean_r) if mean_r else 0.0
    n_models = len({g["model"] for g in gains})
    if up and not down and avg > 0:
        head = f"BeFA helped on this data: significantly better for {', '.join(up)} (of {n_models} models)"
    elif down and not up and avg < 0:
        head = f"BeFA hurt on this data: significantly worse for {', '.join(down)} (of {n_models} models)"
    elif up or down:
        head = (
            f"Mixed result: BeFA was significantly better for {', '.join(up) or 'no model'} "
            f"and significantly worse for {', '.join(down) or 'no model'} (of {n_models} models)"
        )
    else:
        head = f"No significant effect of BeFA on this data for any of the {n_models} models"
    return (
        f"{head}. Mean relative gain over models, test at the best valid epoch: {'; '.join(parts)}. "
        f"Significance: two-sided Wilcoxon signed-rank over test users (per-user differences averaged over seeds), "
        f"Holm-adjusted across models and metrics, alpha = {alpha}."
    )


# -- the study -------------------------------------------------------------------------
def study_folder(params: StudyParams, settings: Settings) -> Path:
    name = params.name or f"{params.dataset}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    return settings.runs_dir / "studies" / name


def run_study(
    params: StudyParams | dict[str, Any],
    settings: Settings | None = None,
    log: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run the whole study (see the module docstring) and write its report."""
    from pipeline.extract import load_features
    from pipeline.full_pipeline import extract_step, ingest_step, split_step
    from pipeline.splits import Split
    from storage.feature_store import FeatureStore
    from pipeline.catalog import Catalog

    settings = settings or get_settings()
    log = log or (lambda msg: None)
    params = validate_study(params, settings)
    folder = study_folder(params, settings)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "params.json", params.model_dump(mode="json"))
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    pp = params.pipeline_params()
    ingest = ingest_step(pp, settings)
    timings["ingest"] = ingest.seconds
    extract = extract_step(pp, settings, ingest.catalog_dir)
    timings["extract"] = extract.seconds
    log("extract: " + ", ".join(f"{m} {f.encoded} encoded / {f.skipped} reused ({f.weights})" for m, f in extract.modalities.items()))
    split = split_step(pp, ingest.catalog_dir)
    timings["split"] = split.seconds
    catalog = Catalog.load(ingest.catalog_dir)
    features = load_features(catalog, FeatureStore(settings.feature_store), extract.fingerprints, snapshots=extract.snapshots)
    all_modalities = sorted(features[0])
    if not all_modalities:
        raise StudyError("the encoder produced no content features; BeFA needs at least one modality")
    runner = _Runner(params, settings, folder, ingest.catalog_dir, features, log)
    rows: list[dict[str, Any]] = []

    # 1. search
    t0 = time.perf_counter()
    searches: dict[tuple[str, str], dict[str, Any]] = {}
    for model in params.models:
        for adapter in ADAPTERS:
            log(f"search {model} {adapter} (<= {params.max_trials} trials)")
            searches[(model, adapter)] = run_search(runner, model, adapter, split.path, all_modalities)
    timings["search"] = time.perf_counter() - t0
    write_json(folder / "search.json", json.loads(json.dumps({f"{m}/{a}": s for (m, a), s in searches.items()}, default=str)))

    # 2. main table
    t0 = time.perf_counter()
    main_runs: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def train_all(spec_of_seed: Callable[[int], RunSpec], seeds: list[int], extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        recs = []
        for seed in seeds:
            spec = spec_of_seed(seed)
            rec = runner.train(spec)
            rows.extend(result_rows(rec, spec, extra or {}))
            recs.append(rec)
        return recs

    for (model, adapter), s in searches.items():
        log(f"main {model} {adapter}: {len(params.seeds)} seeds")
        main_runs[(model, adapter)] = train_all(
            lambda seed: RunSpec(model=model, overrides=s["winner_overrides"], modalities=all_modalities, split=split.path, seed=seed, experiment="main", setting="main"),
            params.seeds,
        )
    timings["main"] = time.perf_counter() - t0

    focus = params.focus_model
    exp_seeds = params.experiment_seed_list
    befa_win = searches[(focus, "befa")]["winner_overrides"]
    base_win = searches[(focus, "none")]["winner_overrides"]

    # 3. decoupling-space sweep
    if params.sweep_t:
        t0 = time.perf_counter()
        log(f"sweep {focus}: t in {params.sweep_t}")
        for t in params.sweep_t:
            train_all(
                lambda seed: RunSpec(model=focus, overrides={**befa_win, "befa.t": float(t)}, modalities=all_modalities, split=split.path, seed=seed, experiment="sweep_t", setting=f"t={t:g}"),
                exp_seeds,
            )
        for seed_rec, seed in zip(main_runs[(focus, "none")], params.seeds):
            if seed in exp_seeds:  # the base reference line of the sweep plot
                spec = RunSpec(model=focus, overrides=base_win, modalities=all_modalities, split=split.path, seed=seed, experiment="sweep_t", setting="base")
                rows.extend(result_rows(seed_rec, spec, {}))
        timings["sweep_t"] = time.perf_counter() - t0

    # 4. modality ablation
    if params.modality_sets:
        t0 = time.perf_counter()
        for mods in params.modality_sets:
            present = [m for m in mods if m in all_modalities]
            if len(present) != len(mods):
                log(f"ablation: {'+'.join(mods)} skipped (the encoder gave {all_modalities})")
                continue
            label = "+".join(sorted(mods))
            log(f"ablation {focus}: {label}")
            for adapter, win in (("none", base_win), ("befa", befa_win)):
                train_all(
                    lambda seed: RunSpec(model=focus, overrides=win, modalities=sorted(mods), split=split.path, seed=seed, experiment="ablation", setting=label),
                    exp_seeds,
                )
        timings["ablation"] = time.perf_counter() - t0

    # 5. sparsity sweep
    if params.train_fractions:
        t0 = time.perf_counter()
        full = Split.load(split.path)
        for frac in params.train_fractions:
            if frac >= 1.0:
                path = split.path
            else:
                sub = full.subsample_train(frac, seed=params.split_seed)
                path = str(sub.save(folder / "splits"))
            log(f"sparsity {focus}: {frac:.0%} of train")
            for adapter, win in (("none", base_win), ("befa", befa_win)):
                train_all(
                    lambda seed: RunSpec(model=focus, overrides=win, modalities=all_modalities, split=path, seed=seed, experiment="sparsity", setting=f"train={frac:.0%}"),
                    exp_seeds,
                    {"train_fraction": frac},
                )
        timings["sparsity"] = time.perf_counter() - t0

    frame = results_frame(rows)
    summary = summarise(frame[frame["experiment"] == "main"], ["model", "adapter"])
    gains = gains_table(summary, params.models)
    sig = significance(main_runs, params.models, params.pooling, params.alpha)
    groups = user_groups(main_runs, params.models, Split.load(split.path).frame)
    overhead = overhead_rows(main_runs, params.models)
    text = verdict(gains, sig, params.alpha)
    notes = budget_notes(frame, params)

    # 6. inspection
    t0 = time.perf_counter()
    from pipeline.adapter_inspect import inspect_adapter

    inspection = inspect_adapter(
        base_run=main_runs[(focus, "none")][0]["run_dir"],
        befa_run=main_runs[(focus, "befa")][0]["run_dir"],
        catalog=catalog,
        split_path=split.path,
        features=features,
        out_dir=folder,
        n_items=params.inspect_items,
        n_users=params.inspect_users,
        seed=params.search_seed,
        device=params.device,
    )
    timings["inspect"] = time.perf_counter() - t0

    # 7. report
    from pipeline.reports import EncoderInfo, weights_label
    from pipeline.study_report import StudyData, write_study_report

    encoders = {
        m: {
            "spec": f.spec, "fingerprint": f.fingerprint, "dim": f.dim, "snapshot": f.snapshot,
            "weights": weights_label(EncoderInfo(spec=f.spec, weights=f.weights, random_init=f.random_init)),
            "random_init": f.random_init,
        }
        for m, f in extract.modalities.items()
    }
    timings["total"] = time.perf_counter() - t_all
    data = StudyData(
        title=f"BeFA study: {ingest.name}",
        params=params.model_dump(mode="json"),
        dataset={"name": ingest.name, "fingerprint": ingest.fingerprint, "users": ingest.num_users, "items": ingest.num_items, "interactions": ingest.num_interactions},
        split={"id": split.id, "kind": split.kind, "seed": split.seed, "counts": split.counts},
        encoders=encoders,
        verdict=text,
        gains=gains,
        significance=sig,
        overhead=overhead,
        user_groups=groups,
        searches=[{"model": m, "adapter": a, "trials": len(s["trials"]), "grid_size": _grid_size(s["grid"]), "winner": s["winner_overrides"], "winner_valid_r20": s["trials"][s["winner"]]["valid"].get("recall@20"), "seconds": s["seconds"]} for (m, a), s in searches.items()],
        inspection=inspection,
        timings=timings,
        runs={"trained": runner.trained, "reused": runner.reused, "train_seconds": runner.seconds},
        notes=notes,
    )
    files = write_study_report(folder, frame, data)
    timings["total"] = time.perf_counter() - t_all
    result = StudyResult(
        folder=str(folder),
        params=params.model_dump(mode="json"),
        verdict=text,
        main=summary.to_dict("records"),
        significance=sig,
        files={k: str(v) for k, v in files.items()},
        timings=timings,
        runs_trained=runner.trained,
        runs_reused=runner.reused,
    )
    write_json(folder / "study_result.json", json.loads(result.model_dump_json()))
    log(text)
    log(f"report: {files['report_html']}")
    return result


def budget_notes(frame: pd.DataFrame, params: StudyParams) -> list[str]:
    """Say so when runs were cut by the epoch cap (not converged) or had a single seed."""
    notes = []
    runs = frame.drop_duplicates("run_dir")
    capped = runs[runs["epochs_run"] >= params.epochs]
    if len(capped):
        notes.append(
            f"{len(capped)} of {len(runs)} runs stopped at the epoch cap ({params.epochs}) before early stopping: "
            "they had not converged, so this is a budget-limited comparison, not the protocol's (1000 epochs, patience 10)."
        )
    if len(params.seeds) < 2:
        notes.append("One seed only: the ± columns are 0 by construction and say nothing about seed variance.")
    return notes


def _grid_size(grid: dict[str, list[Any]]) -> int:
    n = 1
    for v in grid.values():
        n *= len(v)
    return n
