"""befa's side of ``make bench-vs-reference``: one training run, timed per epoch, in its own process.

    python -m benchmarks.befa_side --home H --catalog C --split S --fp image=FP --fp text=FP
        --model M --setting trained|frozen --out progress.jsonl --run-dir R [--max-epochs 1000] [--seed 999]

It trains through the training API (``pipeline.training.api.train_model``), one torch thread,
on the catalog, split and exact feature sets the reference reads (the parent exported them
with ``befa export-mmrec``). The trainer's per-epoch callback appends one JSON line per epoch
to ``--out`` (``{"epoch", "end", "train_s", "eval_s"}``: the run record's own per-epoch
seconds and the wall-clock time of the callback), after a ``{"fit_start": t}`` line;
:func:`benchmarks.pair_timing.befa_spans` reads them. Early stopping is off (patience =
``--max-epochs``): the parent stops the process once both sides have enough overlapping epochs.

Configuration: the model's defaults with embedding 64, batch 2048 and lr 1e-3 (the reference
runner's), and ``train_features`` True (``trained``: the raw feature tables are trained, as
the reference does) or False (``frozen``: befa's default).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

SETTINGS = {"trained": True, "frozen": False}  # setting -> ModelConfig.train_features
CONTENT_FREE = {"lightgcn"}
SHARED_CONFIG = {"embedding_dim": 64, "batch_size": 2048, "lr": 1e-3}


def overrides(setting: str) -> dict[str, Any]:
    """befa's config overrides for one setting (the rest are the model's defaults)."""
    return {**SHARED_CONFIG, "train_features": SETTINGS[setting]}


def command(
    home: Path,
    catalog: str,
    split: str,
    fingerprints: dict[str, str],
    model: str,
    setting: str,
    out: Path,
    run_dir: Path,
    max_epochs: int,
    seed: int,
) -> list[str]:
    """The child's command line (run it from the repository root)."""
    cmd = [sys.executable, "-m", "benchmarks.befa_side", "--home", str(home), "--catalog", catalog, "--split", split]
    for modality, fp in fingerprints.items():
        cmd += ["--fp", f"{modality}={fp}"]
    cmd += ["--model", model, "--setting", setting, "--out", str(out), "--run-dir", str(run_dir)]
    return cmd + ["--max-epochs", str(max_epochs), "--seed", str(seed)]


def read_progress(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines written so far (a line being written is skipped)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def train(args: argparse.Namespace) -> None:
    import torch

    from pipeline.data.catalog import Catalog
    from pipeline.features.load import load_features
    from pipeline.settings import get_settings
    from pipeline.training.api import train_model
    from storage.feature_store import FeatureStore

    torch.set_num_threads(1)  # the graphs built before the trainer's own thread setting, too
    settings = get_settings(home=args.home)
    catalog = Catalog.load(settings.catalog_dir(args.catalog))
    split = catalog.splits_dir / f"{args.split}.parquet"
    fps = dict(kv.split("=", 1) for kv in args.fp)
    features = None
    if args.model not in CONTENT_FREE:
        features = load_features(catalog, FeatureStore(settings.feature_store), fps)
    with open(args.out, "a", buffering=1) as out:

        def write(rec: dict[str, Any]) -> None:
            out.write(json.dumps(rec) + "\n")

        def on_epoch_end(epoch: int, record: Any) -> None:
            log = record.epochs[-1]
            write({"epoch": epoch, "end": time.time(), "train_s": log.train_s, "eval_s": log.eval_s})

        write({"fit_start": time.time()})
        train_model(
            catalog,
            split,
            features,
            args.model,
            overrides(args.setting),
            run_dir=args.run_dir,
            seed=args.seed,
            device="cpu",
            max_epochs=args.max_epochs,
            patience=args.max_epochs,
            quiet=True,
            num_threads=1,
            overwrite=True,
            on_epoch_end=on_epoch_end,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--catalog", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--fp", action="append", default=[], help="MODALITY=FINGERPRINT, repeatable")
    p.add_argument("--model", required=True)
    p.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=999)
    train(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
