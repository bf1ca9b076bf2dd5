"""New items ranked from their content, measured: `make bench-cold-start`.

    python -m benchmarks.bench_cold_start [--catalog movielens|tiktok] [--models bm3,lattice,freedom,mgcn]
        [--seeds 999,1000,1001] [--insertions forward,loss,content] [--id-dropout 0.3]
        [--epochs 1000] [--patience 10] [--threads 1] [--json out.json] [--markdown out.md]

On an item cold-start split (20% of the items with interactions held out with all their
interactions, seed 2024; ``pipeline.data.splits.split_cold_items``) of
``movielens-100k-posters`` (EfficientNet-Lite2 + MiniLM, real weights) or ``tiktok-mmrec``
(its image and audio features as published; ingested as ``tiktok``), it trains:

- the floors: MostPop, and ItemKNN-CBF on every modality alone and combined;
- per content model: base; +BeFA with each insertion; base with ``id_dropout`` (DropoutNet);
  each run on every seed, to early stopping on valid Recall@20 (hybrid setting);
- after each content model's run, both content mappers (regression, ALDI;
  ``pipeline.training.mapping``), automatically.

For every arm (a run as trained, or a run with a mapper under each calibration mode,
``pipeline.evaluation.calibration``) it reports, on test: the cold setting's R@20 and N@20
(warm items masked: the published protocol), the hybrid setting's cold R@20 and warm R@20
and the share of cold items in the users' top 20, mean ± std over seeds; and a paired Wilcoxon test per arm against
the ItemKNN-CBF floor on the cold setting's per-user R@20 (users averaged over seeds),
Holm-adjusted over the arms. The floor compared with is the ItemKNN-CBF variant (one
modality alone, or all combined) with the best VALID cold-setting R@20 (``pick_floor``): a
method must beat the strongest content floor, not the one that happens to be the default.

Resumable: runs live under ``$BEFA_HOME/runs/bench-cold-start/<catalog>/`` and a finished run
(with its mappers) is reused. Hours at the protocol's budget on 2 CPU cores: ``--epochs``
caps each run (the table says how many hit the cap).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CATALOGS = {
    "movielens": ("movielens-100k-posters", "image=effnet:lite2,text=minilm"),
    "tiktok": ("tiktok", "imported"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", choices=sorted(CATALOGS), default="movielens")
    ap.add_argument("--models", default="bm3,lattice,freedom,mgcn")
    ap.add_argument("--seeds", default="999,1000,1001")
    ap.add_argument("--insertions", default="forward,loss,content")
    ap.add_argument("--id-dropout", type=float, default=0.3)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--remap", action="store_true", help="refit the mappers of finished runs (befa map)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    return ap.parse_args(argv)


FLOOR = "itemknn_cbf"  # the combined floor's arm; one modality's is f"{FLOOR}-{modality}"
FLOORS = ("mostpop", FLOOR)  # models with nothing trained: one run stands for every seed


def arms(
    models: list[str], insertions: list[str], id_dropout: float, modalities: list[str] | None = None
) -> list[tuple[str, str, dict[str, Any]]]:
    """(arm name, model, config overrides) of every trained arm; ``modalities`` (of the
    catalog's features) adds an ItemKNN-CBF floor per modality when there are several."""
    from models import MODELS

    out: list[tuple[str, str, dict[str, Any]]] = [("mostpop", "mostpop", {}), (FLOOR, FLOOR, {})]
    if modalities and len(modalities) > 1:
        out += [(f"{FLOOR}-{m}", FLOOR, {"modalities": [m]}) for m in sorted(modalities)]
    for model in models:
        out.append((model, model, {}))
        for ins in insertions:
            if model == "mgcn" and ins == "loss":
                continue  # MGCN has no loss insertion (its adapter replaces the purifier gate)
            out.append((f"{model}+befa-{ins}", model, {"adapter": "befa", "befa.insertion": ins}))
        if id_dropout > 0:
            out.append((f"{model} id_dropout={id_dropout:g}", model, {"id_dropout": id_dropout}))
    assert all(m in MODELS for _, m, _ in out)
    return out


def _rows_of(run_dir: Path, arm: str, seed: int) -> list[dict[str, Any]]:
    """One row per (arm as trained, arm + mapper) of one finished run, with its per-user table path."""
    from pipeline.training.mapping import MAPPER_DIR, MappingRecord
    from pipeline.training.record import PER_USER, RunRecord

    rec = RunRecord.load(run_dir)
    cold, groups = rec.settings.get("cold", {}).get("test"), rec.item_groups.get("test", {})
    cold_valid = rec.settings.get("cold", {}).get("valid")

    def row(name: str, cold_m: Any, hg: dict[str, Any], per_user: Path, valid_m: Any = None) -> dict[str, Any]:
        return {
            "arm": name,
            "seed": seed,
            "cold_valid_r20": (valid_m.metrics.get("recall@20") if valid_m else None),
            "cold_r20": (cold_m.metrics.get("recall@20") if cold_m else None),
            "cold_n20": (cold_m.metrics.get("ndcg@20") if cold_m else None),
            "hybrid_cold_r20": hg["cold"].metrics.get("recall@20") if "cold" in hg else None,
            "hybrid_warm_r20": hg["warm"].metrics.get("recall@20") if "warm" in hg else None,
            "cold_share": hg["cold"].top_share if "cold" in hg else None,
            "epochs": len(rec.epochs),
            "capped": rec.status == "max_epochs",
            "per_user": str(per_user),
        }

    out = [row(arm, cold, groups, run_dir / PER_USER, cold_valid)]
    mapping = MappingRecord.load(run_dir)
    for method, m in mapping.methods.items() if mapping else []:
        modes = m.hybrid_by_calibration or {m.calibration: {"test": m.hybrid_groups.get("test", {})}}
        for mode, groups_by_part in modes.items():
            out.append(
                row(f"{arm} + {method} mapper ({mode})", m.cold_setting.get("test"), groups_by_part.get("test", {}),
                    run_dir / MAPPER_DIR / f"{method}.per_user.parquet", m.cold_setting.get("valid"))
            )  # fmt: skip
    return out


def train_all(args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    from pipeline.data.catalog import Catalog
    from pipeline.data.ingest import ingest
    from pipeline.data.splits import make_split
    from pipeline.features.load import features_for_training
    from pipeline.settings import get_settings
    from pipeline.training.api import load_trained, train_model
    from pipeline.training.mapping import map_run
    from pipeline.training.record import FINISHED, RECORD, RunRecord
    from storage.feature_store import FeatureStore

    settings = get_settings()
    name, encoder = CATALOGS[args.catalog]
    folder = settings.catalog_dir(name)
    if not (folder / "CURRENT").exists() and not (folder / "items.parquet").exists():
        if args.catalog == "tiktok":
            ingest("mmrec", settings, folder=str(settings.datasets_root / "tiktok-mmrec"), name="tiktok")
        else:
            ingest(name, settings)
    catalog = Catalog.load(folder)
    split = make_split(catalog, "cold-items", seed=2024, cold_fraction=0.2)
    split_path = split.save(catalog.splits_dir)
    store = FeatureStore(settings.feature_store)
    features = features_for_training(catalog, encoder, store)
    root = settings.runs_dir / "bench-cold-start" / args.catalog
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    every = arms(args.models.split(","), args.insertions.split(","), args.id_dropout, features.modalities)
    for arm, model, overrides in every:
        for seed in seeds if model not in FLOORS else seeds[:1]:
            run_dir = root / f"{arm.replace(' ', '_').replace('=', '')}-s{seed}"
            done = (run_dir / RECORD).exists() and RunRecord.load(run_dir).status in FINISHED
            if not done:
                print(f"train {arm} seed {seed}", flush=True)
                train_model(
                    folder, split_path, features, model, overrides, run_dir=run_dir, seed=seed,
                    max_epochs=args.epochs, patience=args.patience, quiet=True, num_threads=args.threads,
                    overwrite=True,
                )  # fmt: skip
            elif args.remap and model not in FLOORS:
                print(f"remap {arm} seed {seed}", flush=True)
                trained = load_trained(run_dir, features=features)
                map_run(trained.model, trained.prepared, run_dir, seed=seed)
            found = _rows_of(run_dir, arm, seed)
            rows += found
            if model in FLOORS:  # deterministic: the same result stands for every seed
                rows += [{**r, "seed": s} for r in found for s in seeds[1:]]
    return rows, time.perf_counter() - start


def pick_floor(frame: pd.DataFrame) -> str:
    """The ItemKNN-CBF arm with the best mean VALID cold-setting R@20 (ties: the combined one)."""
    floors = frame[frame["arm"].str.fullmatch(rf"{FLOOR}(-.+)?")]
    if floors.empty:
        raise ValueError(f"no {FLOOR} arm to compare with")
    valid = floors.groupby("arm", sort=False)["cold_valid_r20"].mean().fillna(float("-inf"))
    return max(valid.index, key=lambda arm: (valid[arm], arm == FLOOR))


def summarise(rows: list[dict[str, Any]], floor: str | None = None) -> pd.DataFrame:
    """Mean ± std per arm, and the paired test against the floor (default: ``pick_floor``) on
    cold-setting per-user R@20; ``table.attrs["floor"]`` names it."""
    from pipeline.evaluation.settings import setting_column
    from pipeline.study.stats import holm, paired_test

    frame = pd.DataFrame(rows)
    floor = floor or pick_floor(frame)
    column = setting_column("cold", "recall@20")

    def per_user(path: str) -> pd.DataFrame:
        t = pd.read_parquet(path)
        return t[t["part"] == "test"][["user_idx", column]].dropna()

    floor_rows = frame[frame["arm"] == floor]
    floor_users = {r.seed: per_user(r.per_user) for r in floor_rows.itertuples()}
    out = []
    for arm, g in frame.groupby("arm", sort=False):
        stats = {c: (g[c].mean(), g[c].std(ddof=0)) for c in ("cold_r20", "cold_n20", "hybrid_cold_r20",
                                                              "hybrid_warm_r20", "cold_share")}  # fmt: skip
        pairs = []
        for r in g.itertuples():
            m = per_user(r.per_user).merge(floor_users[r.seed], on="user_idx", suffixes=("_arm", "_floor"))
            pairs.append(pd.DataFrame({"seed": r.seed, "user_idx": m["user_idx"], "base": m[f"{column}_floor"],
                                       "befa": m[f"{column}_arm"]}))  # fmt: skip
        test = paired_test(pd.concat(pairs), column) if arm != floor else None
        out.append({"arm": arm, "seeds": len(g), "capped": int(g["capped"].sum()),
                    **{f"{k}_mean": v[0] for k, v in stats.items()}, **{f"{k}_std": v[1] for k, v in stats.items()},
                    "p_vs_floor": test.p_wilcoxon if test else None,
                    "diff_vs_floor": test.mean_diff if test else None})  # fmt: skip
    table = pd.DataFrame(out)
    table["p_holm"] = holm(list(table["p_vs_floor"]))
    table.attrs["floor"] = floor
    return table


def markdown(table: pd.DataFrame, title: str) -> str:
    def f(m: float, s: float) -> str:
        return "-" if m != m else f"{m:.4f} ± {s:.4f}"

    floor = table.attrs.get("floor", FLOOR)
    lines = [f"### {title}", "", f"Compared with: `{floor}` (the ItemKNN-CBF variant best on valid).", "",
             "| arm | seeds (capped) | cold R@20 | cold N@20 | hybrid cold R@20 | hybrid warm R@20 "
             f"| cold in top 20 | vs {floor} (cold R@20) | Holm p |", "|" + " --- |" * 9]  # fmt: skip
    for r in table.itertuples():
        share = "-" if r.cold_share_mean != r.cold_share_mean else f"{r.cold_share_mean:.1%}"
        diff = "floor" if r.diff_vs_floor is None or r.diff_vs_floor != r.diff_vs_floor else f"{r.diff_vs_floor:+.4f}"
        p = "-" if r.p_holm is None or r.p_holm != r.p_holm else f"{r.p_holm:.2g}"
        cells = [
            f(r.cold_r20_mean, r.cold_r20_std),
            f(r.cold_n20_mean, r.cold_n20_std),
            f(r.hybrid_cold_r20_mean, r.hybrid_cold_r20_std),
            f(r.hybrid_warm_r20_mean, r.hybrid_warm_r20_std),
        ]
        lines.append(f"| {r.arm} | {r.seeds} ({r.capped}) | {' | '.join(cells)} | {share} | {diff} | {p} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("BEFA_DATASETS_ROOT", str((REPO.parent / "shared" / "datasets").resolve()))
    rows, wall = train_all(args)
    table = summarise(rows)
    text = markdown(table, f"{args.catalog}, cold-items split (20% of items, seed 2024), test")
    print(text)
    print(f"wall {wall / 60:.1f} min")
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "table": table.to_dict("records"), "wall_s": wall},
                                              indent=2, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
