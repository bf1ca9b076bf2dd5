"""From run records to the study's answer: the long results table, mean ± std over seeds,
relative gains, paired per-user tests (Holm-adjusted), user-activity groups, parameter
and time overhead, and the one-paragraph verdict.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from pipeline.evaluation.settings import setting_column
from pipeline.study.params import StudyParams
from pipeline.study.report.tables import HEADLINE, PAPER_CLAIM
from pipeline.study.rows import FloorRow, GainRow, OverheadRow, SignificanceRow, UserGroupRow
from pipeline.study.runner import RunSpec
from pipeline.study.stats import holm, paired_frame, paired_test
from pipeline.training.floor_check import FLOOR_METRIC, FLOOR_MODEL
from pipeline.training.gate_health import COLLAPSED
from pipeline.training.record import RunRecord, read_per_user
from storage.keys import modality_order

# -- results ---------------------------------------------------------------------------
RESULT_COLUMNS = [
    "experiment",
    "setting",
    "model",
    "adapter",
    "seed",
    "split",
    "metric",
    "value",
    "t",
    "modalities",
    "train_fraction",
    "best_epoch",
    "epochs_run",
    "train_epoch_s",
    "run_dir",
]


Runs = dict[tuple[str, str], list[RunRecord]]  # (model, adapter) -> one record per seed


def result_rows(rec: RunRecord, spec: RunSpec, extra: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric (test and valid at the best valid epoch) of one run."""
    rows = []
    wall = rec.wall
    base = {
        "experiment": spec.experiment,
        "setting": spec.setting,
        "model": spec.model,
        "adapter": spec.adapter,
        "seed": spec.seed,
        "t": float(rec.config.get("befa", {}).get("t")) if spec.adapter == "befa" else None,
        "modalities": "+".join(modality_order(spec.modalities)),
        "train_fraction": extra.get("train_fraction", 1.0),
        "best_epoch": rec.best_epoch,
        "epochs_run": len(rec.epochs),
        "train_epoch_s": wall.get("train_epoch_mean_s"),
        "run_dir": rec.run_dir,
    }
    for split_name, metrics in (("test", rec.test), ("valid", rec.best_valid)):
        for metric, value in sorted(metrics.items()):
            rows.append({**base, "split": split_name, "metric": metric, "value": float(value)})
        # item groups (warm / cold / long tail) as metrics "<group>/<metric>"
        for group, g in rec.item_groups.get(split_name, {}).items():
            for metric, value in sorted(g.metrics.items()):
                rows.append({**base, "split": split_name, "metric": f"{group}/{metric}", "value": float(value)})
        # cold-items splits: the cold and warm settings (candidates restricted; pipeline.evaluation.settings)
        # as metrics "<setting>_setting/<metric>", the per-user columns' names
        for setting, per_part in rec.settings.items():
            g = per_part.get(split_name)
            for metric, value in sorted(g.metrics.items() if g else []):
                rows.append(
                    {**base, "split": split_name, "metric": setting_column(setting, metric), "value": float(value)}
                )
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
    return read_per_user(run_dir)


def paired_per_user(runs: Runs, models: list[str]) -> list[tuple[str, tuple[list[pd.DataFrame], list[pd.DataFrame]]]]:
    """Per model trained both ways: the per-user tables of base and +BeFA, seed by seed."""
    out = []
    for model in models:
        base, befa = runs.get((model, "none"), []), runs.get((model, "befa"), [])
        n = min(len(base), len(befa))
        if n:
            out.append((model, ([per_user(r.run_dir) for r in base[:n]], [per_user(r.run_dir) for r in befa[:n]])))
    return out


def significance(runs: Runs, models: list[str], pooling: str, alpha: float) -> list[SignificanceRow]:
    """Paired tests per model x headline metric, with Holm-adjusted Wilcoxon p-values."""
    out = []
    for model, (b_tabs, a_tabs) in paired_per_user(runs, models):
        for metric in HEADLINE:
            test = paired_test(paired_frame(b_tabs, a_tabs, metric), metric, pooling)  # type: ignore[arg-type]
            out.append(SignificanceRow(model=model, **test.to_dict()))
    adjusted = holm([r.p_wilcoxon for r in out])
    for r, p in zip(out, adjusted):
        r.p_wilcoxon_holm = p
        r.significant = p is not None and p < alpha
    return out


def user_groups(runs: Runs, models: list[str], split_frame: pd.DataFrame, groups: int = 3) -> list[UserGroupRow]:
    """Test Recall@20 / NDCG@20 of base and +BeFA by user activity (train-size terciles)."""
    train = split_frame[split_frame["label"] == 0].groupby("user_idx").size().rename("n_train")
    out = []
    for model, (b_tabs, a_tabs) in paired_per_user(runs, models):
        for metric in HEADLINE:
            pairs = paired_frame(b_tabs, a_tabs, metric).groupby("user_idx")[["base", "befa"]].mean()
            pairs = pairs.join(train, how="left").fillna({"n_train": 0})
            ranks = pairs["n_train"].rank(method="first")
            pairs["group"] = pd.qcut(ranks, q=min(groups, len(pairs)), labels=False) if len(pairs) else []
            for g, sub in pairs.groupby("group"):
                lo, hi = int(sub["n_train"].min()), int(sub["n_train"].max())
                b, a = float(sub["base"].mean()), float(sub["befa"].mean())
                out.append(
                    UserGroupRow(
                        model=model,
                        metric=metric,
                        group=int(g),
                        train_interactions=f"{lo}-{hi}",
                        users=int(len(sub)),
                        base=b,
                        befa=a,
                        relative_gain=(a - b) / b if b else None,
                    )
                )
    return out


def overhead_rows(main_runs: Runs, models: list[str]) -> list[OverheadRow]:
    """Parameters and seconds per epoch, base vs +BeFA (first seed's records; times: mean over seeds)."""
    rows = []
    for model in models:
        base, befa = main_runs.get((model, "none"), []), main_runs.get((model, "befa"), [])
        if not base or not befa:
            continue
        pb, pa_ = base[0].parameters, befa[0].parameters
        with_b = pb.get("params_base_with_feature_tables", 0)
        without_b = pb.get("params_base_without_feature_tables", 0)
        adapter = pa_.get("params_adapter", 0)
        # totals of what each model holds (trainable + frozen tables)
        total_b_with = with_b
        total_a_with = pa_.get("params_base_with_feature_tables", 0) + adapter
        total_b_without = without_b
        total_a_without = pa_.get("params_base_without_feature_tables", 0) + adapter

        def epoch_s(recs):
            vals = [r.wall.get("train_epoch_mean_s") for r in recs]
            vals = [v for v in vals if v is not None]
            return sum(vals) / len(vals) if vals else None

        tb, ta = epoch_s(base), epoch_s(befa)
        rows.append(
            OverheadRow(
                model=model,
                adapter_params=int(adapter),
                base_params_without_tables=int(total_b_without),
                base_params_with_tables=int(total_b_with),
                befa_params_without_tables=int(total_a_without),
                befa_params_with_tables=int(total_a_with),
                adapter_overhead_without_tables=adapter / total_b_without if total_b_without else None,
                adapter_overhead_with_tables=adapter / total_b_with if total_b_with else None,
                net_overhead_without_tables=(total_a_without - total_b_without) / total_b_without
                if total_b_without
                else None,
                net_overhead_with_tables=(total_a_with - total_b_with) / total_b_with if total_b_with else None,
                epoch_s_base=tb,
                epoch_s_befa=ta,
                epoch_time_ratio=ta / tb if ta and tb else None,
                epochs_base=[len(r.epochs) for r in base],
                epochs_befa=[len(r.epochs) for r in befa],
            )
        )
    return rows


def gains_table(summary: pd.DataFrame, models: list[str]) -> list[GainRow]:
    """Per model and headline metric: mean ± std of base and +BeFA, relative gain of the means."""
    rows = []
    for model in models:
        for metric in HEADLINE:
            sel = (summary["model"] == model) & (summary["metric"] == metric)
            b, a = summary[sel & (summary["adapter"] == "none")], summary[sel & (summary["adapter"] == "befa")]
            if b.empty or a.empty:
                continue
            bm, am = float(b["mean"].iloc[0]), float(a["mean"].iloc[0])
            rows.append(
                GainRow(
                    model=model,
                    metric=metric,
                    base_mean=bm,
                    base_std=float(b["std"].iloc[0]),
                    befa_mean=am,
                    befa_std=float(a["std"].iloc[0]),
                    seeds=int(min(b["n"].iloc[0], a["n"].iloc[0])),
                    relative_gain=(am - bm) / bm if bm else None,
                )
            )
    return rows


def floor_rows(runs: Runs, models: list[str]) -> list[FloorRow]:
    """MostPop's valid/test Recall@20, then each (model, adapter) arm's seed means against it
    (below: the arm's mean valid value is under MostPop's; valid, the selection split)."""
    floor = runs.get((FLOOR_MODEL, "none"))
    if not floor:
        return []
    fv, ft = floor[0].best_valid.get(FLOOR_METRIC), floor[0].test.get(FLOOR_METRIC)
    rows = [FloorRow(model=FLOOR_MODEL, adapter="none", valid=fv, test=ft, seeds=1, below=None, below_seeds=0)]
    for model in models:
        for adapter in ("none", "befa"):
            recs = runs.get((model, adapter), [])
            if not recs or fv is None:
                continue
            valid = [r.best_valid.get(FLOOR_METRIC, 0.0) for r in recs]
            test = [r.test.get(FLOOR_METRIC, 0.0) for r in recs]
            causes = sorted({c.split(":")[0] for r in recs if r.below_floor for c in r.floor.causes})
            rows.append(
                FloorRow(
                    model=model,
                    adapter=adapter,
                    valid=sum(valid) / len(valid),
                    test=sum(test) / len(test),
                    seeds=len(recs),
                    below=sum(valid) / len(valid) < fv,
                    below_seeds=sum(v < fv for v in valid),
                    causes=causes,
                )
            )
    return rows


def _floor_sentence(floor: list[FloorRow] | None) -> tuple[str, bool]:
    """(the verdict's floor sentence, whether every arm is below the floor)."""
    if not floor:
        return "", False
    ref, arms = floor[0], floor[1:]
    where = f"MostPop floor: test {FLOOR_METRIC} {ref.test:.4f} (valid {ref.valid:.4f})"
    below = [f"{a.model} {'+BeFA' if a.adapter == 'befa' else 'base'}" for a in arms if a.below]
    if not below:
        return f"{where}; every arm is above it.", False
    causes = sorted({c for a in arms if a.below for c in a.causes})
    why = f" (likely: {'; '.join(causes)})" if causes else ""
    return (
        f"{where}. Below it on valid: {', '.join(below)}{why}; "
        "a gain between runs that learned less than popularity says little about BeFA.",
        len(below) == len(arms),
    )


def verdict(gains: list[GainRow], sig: list[SignificanceRow], alpha: float, floor: list[FloorRow] | None = None) -> str:
    """One plain paragraph that leads with significance and the MostPop floor; the raw mean
    gain (and the paper's claim) comes last, as what it is."""
    if not gains:
        return "No model was trained both ways, so the study cannot say whether BeFA helps."
    parts = []
    for metric in HEADLINE:
        vals = [g.relative_gain for g in gains if g.metric == metric and g.relative_gain is not None]
        if vals:
            mean = sum(vals) / len(vals)
            parts.append(f"{metric} {mean * 100:+.2f}% (paper: {PAPER_CLAIM[metric] * 100:+.2f}%)")
    up = sorted({s.model for s in sig if s.significant and s.mean_diff > 0})
    down = sorted({s.model for s in sig if s.significant and s.mean_diff < 0})
    mean_r = [g.relative_gain for g in gains if g.metric == "recall@20" and g.relative_gain is not None]
    avg = sum(mean_r) / len(mean_r) if mean_r else 0.0
    n_models = len({g.model for g in gains})
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
    text = (
        f"{head}; tested with a two-sided Wilcoxon signed-rank over test users (per-user differences averaged over "
        f"seeds), Holm-adjusted across models and metrics, alpha = {alpha}."
    )
    floor_text, all_below = _floor_sentence(floor)
    if all_below:
        text = "Inconclusive: every run is below the MostPop floor, so this study cannot judge BeFA. " + text
    caveat = "not significant for any model" if not (up or down) else "significant only where stated above"
    gain_text = f"Raw mean relative gain over models ({caveat}; test at the best valid epoch): {'; '.join(parts)}."
    return " ".join(t for t in (text, floor_text, gain_text) if t)


def epoch_cap_count(frame: pd.DataFrame, params: StudyParams) -> tuple[int, int]:
    """(runs that stopped at the epoch cap, trained runs): the protocol's target is none."""
    runs = frame.drop_duplicates("run_dir")
    runs = runs[runs["experiment"] != "floor"]  # MostPop trains nothing: no cap to hit
    return int((runs["epochs_run"] >= params.epochs).sum()), len(runs)


def budget_notes(frame: pd.DataFrame, params: StudyParams) -> list[str]:
    """Say so when runs were cut by the epoch cap (not converged) or had a single seed."""
    notes = []
    capped, total = epoch_cap_count(frame, params)
    if capped:
        notes.append(
            f"{capped} of {total} runs stopped at the epoch cap ({params.epochs}) before early stopping: "
            "they had not converged, so this is a budget-limited comparison, "
            "not the protocol's (1000 epochs, patience 10)."
        )
    if len(params.seeds) < 2:
        notes.append("One seed only: the ± columns are 0 by construction and say nothing about seed variance.")
    return notes


def gate_notes(runs: Runs, models: list[str]) -> list[str]:
    """One note per model whose +BeFA runs had a collapsed gate at their best valid epoch
    (``RunRecord.gate_collapsed``; rule in ``pipeline.training.gate_health``)."""
    notes = []
    for model in models:
        seeds = runs.get((model, "befa"), [])
        counts = Counter(m for r in seeds for m, collapsed in r.gate_collapsed.items() if collapsed)
        where = [f"{m} in {n} of {len(seeds)} seeds" for m, n in sorted(counts.items())]
        inert = sorted({r.befa_inert for r in seeds if r.befa_inert})
        if inert:
            notes.append(
                f"{model} +BeFA: BeFA is inert in this study ({'; '.join(inert)}): its gain is not BeFA's effect."
            )
        elif where:
            notes.append(f"{model} +BeFA: {COLLAPSED} ({', '.join(where)}); its gain is not BeFA's effect there.")
    return notes


def grid_size(grid: dict[str, list[Any]]) -> int:
    n = 1
    for v in grid.values():
        n *= len(v)
    return n
