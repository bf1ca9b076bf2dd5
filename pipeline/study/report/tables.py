"""What the study report shows, as data: the record a study hands the report
(:class:`StudyData`), the paper's claim, and the tables (header, rows) that both the
markdown and the HTML report render.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field, model_validator

from pipeline.data.summary import DatasetSummary, SplitSummary
from pipeline.features.summary import ModalityFeatures
from pipeline.reporting.common import ADAPTER_LABEL
from pipeline.study.params import StudyParams
from pipeline.study.rows import (
    AuthorsArm,
    ColdItems,
    FloorRow,
    GainRow,
    InsertionAblation,
    OverheadRow,
    SearchRow,
    SelectionBiasRow,
    SignificanceRow,
    UserGroupRow,
)

# The paper's average relative gains over its models and datasets (befa-spec, section 4).
PAPER_CLAIM = {"recall@20": 0.0907, "ndcg@20": 0.1102}


HEADLINE = ("recall@20", "ndcg@20")


class RunCounts(BaseModel):
    """How many runs the study trained and reused, and how many the epoch cap cut short."""

    trained: int = 0
    reused: int = 0
    train_seconds: float = 0.0
    at_epoch_cap: int | None = None  # None: not recorded (an older study)
    counted: int | None = None


class StudyData(BaseModel):
    """Everything the report shows besides the per-run results frame. The catalog, split
    and features are the data and features packages' records; the rows of the tables
    are the study's analysis (``pipeline.study.analysis``)."""

    title: str
    params: StudyParams
    dataset: DatasetSummary
    split: SplitSummary
    features: dict[str, ModalityFeatures] = Field(default_factory=dict)
    verdict: str = ""
    # MostPop first, then each (model, adapter) arm against it (pipeline.study.analysis.floor_rows);
    # empty for older studies
    floor: list[FloorRow] = Field(default_factory=list)
    gains: list[GainRow] = Field(default_factory=list)
    significance: list[SignificanceRow] = Field(default_factory=list)
    overhead: list[OverheadRow] = Field(default_factory=list)
    user_groups: list[UserGroupRow] = Field(default_factory=list)
    # per experiment x model x item group (warm / cold / long tail) x metric; empty for older studies
    item_groups: list[dict[str, Any]] = Field(default_factory=list)
    cold_items: ColdItems | None = None  # the cold-start phase: split, gains, significance
    searches: list[SearchRow] = Field(default_factory=list)
    # per model x metric: the gain if each arm's winner were picked on TEST vs on VALID; empty for older studies
    selection_bias: list[SelectionBiasRow] = Field(default_factory=list)
    # LATTICE as the authors ran it (pipeline.study.authors_arm); None when it did not run, or an older study
    authors_arm: AuthorsArm | None = None
    # where BeFA acts (pipeline.study.insertions): each insertion's +BeFA, gate health and distributions;
    # None when the ablation did not run, or an older study
    insertions: InsertionAblation | None = None
    inspection: dict[str, Any] | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    runs: RunCounts = Field(default_factory=RunCounts)
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _older_study(cls, data: Any) -> Any:
        """``study.json`` of studies written before the typed records: other key names."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("cold_items") == {}:
            data["cold_items"] = None
        if "encoders" in data:
            data["features"] = data.pop("encoders")
        ds = data.get("dataset")
        if isinstance(ds, dict) and "users" in ds:
            data["dataset"] = {
                "name": ds.get("name"),
                "fingerprint": ds.get("fingerprint"),
                "num_users": ds.get("users"),
                "num_items": ds.get("items"),
                "num_interactions": ds.get("interactions"),
            }
        sp = data.get("split")
        if isinstance(sp, dict) and "path" not in sp:
            data["split"] = {"path": "", "k_core": None, "seed": None, "kind": "", **sp}
        return data


# -- formatting ------------------------------------------------------------------------
def fmt_num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{float(v):.{digits}f}"


def _pct(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{float(v) * 100:+.{digits}f}%"


def _p(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{float(v):.3g}"


def _ms(mean: Any, std: Any) -> str:
    return f"{fmt_num(mean)} ± {fmt_num(std)}"


# -- tables (rows of strings, shared by Markdown and HTML) ---------------------------------
def main_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    return gains_table(data.gains, data.significance)


def gains_table(gains: list[GainRow], significance: list[SignificanceRow]) -> tuple[list[str], list[list[str]]]:
    """Base vs +BeFA per model and metric, with the paired tests."""
    sig = {(s.model, s.metric): s for s in significance}
    head = [
        "model",
        "metric",
        "base (mean ± std)",
        "+BeFA (mean ± std)",
        "seeds",
        "relative gain",
        "Wilcoxon p",
        "Holm p",
        "t-test p",
        "users +/-",
        "significant",
    ]
    rows = []
    for g in gains:
        s = sig.get((g.model, g.metric))
        tests = (
            [
                _p(s.p_wilcoxon),
                _p(s.p_wilcoxon_holm),
                _p(s.p_ttest),
                f"{s.wins}/{s.losses}",
                "yes" if s.significant else "no",
            ]
            if s is not None
            else ["n/a", "n/a", "n/a", "-/-", "n/a"]
        )
        rows.append(
            [
                g.model,
                g.metric,
                _ms(g.base_mean, g.base_std),
                _ms(g.befa_mean, g.befa_std),
                str(g.seeds),
                _pct(g.relative_gain),
                *tests,
            ]
        )
    return head, rows


def floor_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """MostPop, then every arm's seed-mean Recall@20 against it (valid decides, test shown)."""
    head = ["run", "valid recall@20", "test recall@20", "seeds", "vs MostPop floor", "likely cause"]
    rows = []
    for f in data.floor:
        if f.model == "mostpop":
            rows.append(["MostPop (floor)", fmt_num(f.valid), fmt_num(f.test), "-", "the floor", "-"])
            continue
        if f.below:
            verdict = f"BELOW ({f.below_seeds}/{f.seeds} seeds)"
        else:
            verdict = f"above ({f.below_seeds}/{f.seeds} seeds below)" if f.below_seeds else "above"
        label = f"{f.model} {ADAPTER_LABEL.get(f.adapter, f.adapter)}"
        rows.append([label, fmt_num(f.valid), fmt_num(f.test), str(f.seeds), verdict, "; ".join(f.causes) or "-"])
    return head, rows


def mean_gain_rows(data: StudyData) -> list[list[str]]:

    rows = []
    for metric, claim in PAPER_CLAIM.items():
        vals = [g.relative_gain for g in data.gains if g.metric == metric and g.relative_gain is not None]
        rows.append([metric, _pct(sum(vals) / len(vals)) if vals else "n/a", _pct(claim), str(len(vals))])
    return rows


def overhead_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    head = [
        "model",
        "adapter params",
        "base params w/o tables",
        "base params with tables",
        "overhead w/o tables (paper's count)",
        "overhead with tables",
        "net change w/o tables",
        "s/epoch base",
        "s/epoch +BeFA",
        "time ratio",
        "epochs base",
        "epochs +BeFA",
    ]
    rows = []
    for o in data.overhead:
        rows.append(
            [
                o.model,
                f"{o.adapter_params:,}",
                f"{o.base_params_without_tables:,}",
                f"{o.base_params_with_tables:,}",
                _pct(o.adapter_overhead_without_tables),
                _pct(o.adapter_overhead_with_tables),
                _pct(o.net_overhead_without_tables),
                fmt_num(o.epoch_s_base, 3),
                fmt_num(o.epoch_s_befa, 3),
                fmt_num(o.epoch_time_ratio, 2) + "x" if o.epoch_time_ratio else "-",
                ",".join(map(str, o.epochs_base)),
                ",".join(map(str, o.epochs_befa)),
            ]
        )
    return head, rows


def experiment_table(
    frame: pd.DataFrame, experiment: str, metric: str = "recall@20"
) -> tuple[list[str], list[list[str]]]:
    sub = frame[(frame["experiment"] == experiment) & (frame["split"] == "test") & (frame["metric"] == metric)]
    head = ["setting", "model", "adapter", f"test {metric} (mean ± std)", "seeds"]
    rows = []
    for (setting, model, adapter), g in sub.groupby(["setting", "model", "adapter"], sort=False):
        v = g["value"].to_numpy(float)
        rows.append(
            [
                setting,
                model,
                ADAPTER_LABEL.get(adapter, adapter),
                _ms(v.mean(), v.std(ddof=1) if v.size > 1 else 0.0),
                str(v.size),
            ]
        )
    return head, rows


def groups_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    head = ["model", "metric", "user group (train interactions)", "users", "base", "+BeFA", "relative gain"]
    rows = [
        [g.model, g.metric, g.train_interactions, str(g.users), fmt_num(g.base), fmt_num(g.befa), _pct(g.relative_gain)]
        for g in data.user_groups
    ]
    return head, rows


def item_groups_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """Base vs +BeFA by item group, for the main split and the cold-items split."""
    head = [
        "split",
        "model",
        "item group",
        "metric",
        "users",
        "base (mean ± std)",
        "+BeFA (mean ± std)",
        "relative gain",
        "Wilcoxon p",
        "Holm p",
    ]
    label = {"main": "main", "cold_items": "cold-items"}
    rows = [
        [
            label.get(g["experiment"], g["experiment"]),
            g["model"],
            g["group"],
            g["metric"],
            str(g["users"] if g["users"] is not None else "-"),
            _ms(g["base_mean"], g["base_std"]),
            _ms(g["befa_mean"], g["befa_std"]),
            _pct(g["relative_gain"]),
            _p(g["p_wilcoxon"]),
            _p(g["p_wilcoxon_holm"]),
        ]
        for g in data.item_groups
    ]
    return head, rows


def cold_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """The cold-items split's base vs +BeFA (all test users), as the main table."""
    cold = data.cold_items or ColdItems(cold_fraction=None, split_id=None)
    return gains_table(cold.gains, cold.significance)


ITEM_GROUPS_NOTE = (
    "Item groups: warm = items the split does not hold out as cold; cold = the cold-items split's items with no "
    "train interaction; long tail = the least popular 80% of items by train popularity. A group's metric counts, "
    "per user, only the user's held-out items in the group (users with none are skipped); ranks are those of the "
    "full ranking over all items. Wilcoxon over the group's users, Holm-adjusted over every row of this table."
)


def search_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    head = ["model", "adapter", "trials", "pruned", "grid size", "winner (valid Recall@20)", "valid R@20", "seconds"]
    rows = []
    for s in data.searches:
        fixed = {k: v for k, v in s.winner.items() if k != "adapter" and k not in s.winner_params}
        win = {**fixed, **s.winner_params}  # the fixed overrides, then every searched key (older studies: overrides)
        adapter = ADAPTER_LABEL.get(s.adapter, s.adapter)
        rows.append(
            [
                s.model,
                adapter,
                str(s.trials),
                str(s.pruned),
                str(s.grid_size),
                json.dumps(win),
                fmt_num(s.winner_valid_r20),
                f"{s.seconds:.0f}",
            ]
        )
    return head, rows


def encoder_rows(data: StudyData) -> list[list[str]]:
    rows = []
    for m, f in data.features.items():
        weights = f.weights_label
        if f.random_init:
            weights = f"{weights}: RANDOM WEIGHTS, no semantic content"
        rows.append([m, f.spec, weights, str(f.dim if f.dim is not None else "-"), f.snapshot])
    return rows


# -- notes under the tables --------------------------------------------------------------
OVERHEAD_NOTE = (
    "Overhead w/o tables = adapter parameters / the base model's trainable parameters excluding the raw "
    "feature tables (the paper's 0.93-2.09% count); with tables = the same over a base that also counts the "
    "I x D_m feature tables (frozen here). Net change also counts what BeFA removes (MGCN's purifier)."
)
COSINE_NOTE = (
    "Before/after, per item and modality, in the trained +BeFA model: cos(c_m, adapted_m) with c_m = P_m X_m "
    "the content feature at the adapter's insertion point and adapted_m = E_i * g_m(c_m) what the model "
    "consumes there instead; cos(E_i, adapted_m) shows how much the gate reshapes the behaviour embedding."
)


def cap_line(data: StudyData) -> str:
    """How many runs the epoch cap cut short (the protocol's target: none)."""
    runs = data.runs
    if runs.at_epoch_cap is None:
        return "runs at the epoch cap: not recorded (a report from an older study)"
    cap = data.params.epochs
    return (
        f"runs stopped by the epoch cap ({cap}) before early stopping: {runs.at_epoch_cap} of {runs.counted} "
        "(target: none)"
    )
