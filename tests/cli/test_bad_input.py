"""Bad input, case by case: each case names its input, the message it must get (the file,
the row and the problem, in CLI words), exit code 2, no traceback, and that nothing under
``BEFA_HOME`` changed (every file hashed before and after; lock files aside, they hold no
state). Skip-and-report cases are at the end: the good rows are in, the bad ones in the report.

The home holds a good catalog ``shop`` (ingested, split, features extracted with a tiny
random encoder, one LightGCN run), so a bad re-ingest or a bad train is checked against
real state, not an empty folder.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli.main import app

ENCODER = "imagebind:tiny@random"
runner = CliRunner()


def _write_source(src: Path) -> None:
    (src / "images").mkdir(parents=True, exist_ok=True)
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 100, 200 - 20 * i)).save(src / "images" / f"p{i}.jpg")
    items = pd.DataFrame(
        {
            "item_id": [f"p{i}" for i in range(8)],
            "title": [f"Item {i}" for i in range(8)],
            "text": [f"a product numbered {i}" for i in range(8)],
            "image": [f"p{i}.jpg" for i in range(8)],
        }
    )
    items.to_csv(src / "items.csv", index=False)
    rows = [(f"u{u}", f"p{(u + k) % 8}", 5, 1_700_000_000 + 10 * u + k) for u in range(12) for k in range(5)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(
        src / "interactions.csv", index=False
    )


def _ingest_args(src: Path, name: str = "shop") -> list[str]:
    return [
        "ingest",
        "generic",
        "--as",
        name,
        "--items",
        str(src / "items.csv"),
        "--interactions",
        str(src / "interactions.csv"),
        "--images",
        str(src / "images"),
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory, datasets_root):
    root = tmp_path_factory.mktemp("bad-input")
    src = root / "good"
    _write_source(src)
    env = {
        "BEFA_HOME": str(root / "home"),
        "BEFA_DATASETS_ROOT": str(datasets_root),
        "BEFA_FEATURE_STORE": str(root / "home" / "features"),
    }
    for args in (
        _ingest_args(src),
        ["split", "shop"],
        ["extract", "--dataset", "shop", "--encoder", ENCODER],
        [
            "train",
            "--dataset",
            "shop",
            "--model",
            "lightgcn",
            "--epochs",
            "1",
            "--run-dir",
            str(root / "home" / "runs" / "lgcn"),
            "--set",
            "embedding_dim=8",
        ],
    ):
        res = runner.invoke(app, args, env=env)
        assert res.exit_code == 0, (args, res.output)
    return {"root": root, "src": src, "home": root / "home", "env": env, "run": root / "home" / "runs" / "lgcn"}


def _state(home: Path) -> dict[str, str]:
    return {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.rglob("*"))
        if p.is_file() and p.name != ".lock" and not p.name.endswith(".lock")
    }


def _said(output: str) -> str:
    return " ".join(output.split())  # rich wraps long lines


@dataclass
class Case:
    name: str
    args: Callable[[dict, Path], list[str]]  # (world, source folder of this case) -> befa arguments
    message: str  # must appear in the output, whitespace-normalised
    edit: Callable[[Path], None] = field(default=lambda src: None)  # spoils a copy of the good source
    code: int = 2


def _items(src: Path) -> pd.DataFrame:
    return pd.read_csv(src / "items.csv", dtype=str, keep_default_na=False)


def _inter(src: Path) -> pd.DataFrame:
    return pd.read_csv(src / "interactions.csv", dtype=str, keep_default_na=False)


def _set_cell(file: str, row: int, column: str, value: str) -> Callable[[Path], None]:
    def edit(src: Path) -> None:
        frame = pd.read_csv(src / file, dtype=str, keep_default_na=False)
        frame.loc[row - 1, column] = value
        frame.to_csv(src / file, index=False)

    return edit


def _drop_column(file: str, column: str) -> Callable[[Path], None]:
    def edit(src: Path) -> None:
        frame = pd.read_csv(src / file, dtype=str, keep_default_na=False)
        frame.drop(columns=[column]).to_csv(src / file, index=False)

    return edit


def _write_bytes(file: str, data: bytes) -> Callable[[Path], None]:
    return lambda src: (src / file).write_bytes(data)


def ingest(w: dict, src: Path) -> list[str]:
    return _ingest_args(src)


def ingest_new(w: dict, src: Path) -> list[str]:
    return _ingest_args(src, name="fresh")


def cli(*args: str) -> Callable[[dict, Path], list[str]]:
    return lambda w, src: [a.format(run=w["run"], home=w["home"], src=src) for a in args]


CASES = [
    # -- ingest: files and columns
    Case(
        "items file missing",
        lambda w, s: _ingest_args(s)[:5] + [str(s / "nope.csv")] + _ingest_args(s)[6:],
        "nope.csv: missing item table",
    ),
    Case(
        "interactions file missing",
        lambda w, s: _ingest_args(s)[:7] + [str(s / "none.csv")] + _ingest_args(s)[8:],
        "none.csv: missing interaction table",
    ),
    Case("images folder missing", lambda w, s: _ingest_args(s)[:9] + [str(s / "pics")], "pics"),
    Case(
        "no item_id column",
        ingest,
        "items.csv: missing column(s) ['item_id'] (item id); found ['title', 'text', 'image']. "
        "Name the column with --column item_id_column=NAME (ingest option item_id_column).",
        _drop_column("items.csv", "item_id"),
    ),
    Case(
        "no user_id column",
        ingest,
        "interactions.csv: missing column(s) ['user_id']; found ['item_id', 'rating', 'timestamp']. "
        "Name the column with --column user_id_column=NAME (ingest option user_id_column).",
        _drop_column("interactions.csv", "user_id"),
    ),
    Case(
        "no item_id in interactions",
        ingest_new,
        "interactions.csv: missing column(s) ['item_id']; found ['user_id', 'rating', 'timestamp']. "
        "Name the column with --column interaction_item_column=NAME (ingest option interaction_item_column).",
        _drop_column("interactions.csv", "item_id"),
    ),
    Case("empty item id", ingest, "items.csv, data row 3", _set_cell("items.csv", 3, "item_id", "")),
    Case("empty user id", ingest, "interactions.csv, data row 5", _set_cell("interactions.csv", 5, "user_id", "")),
    Case("conflicting duplicate item", ingest, "items.csv", _set_cell("items.csv", 2, "item_id", "p0")),
    Case(
        "unknown item in interactions",
        ingest,
        "interactions.csv, data row 4",
        _set_cell("interactions.csv", 4, "item_id", "zz"),
    ),
    Case(
        "unknown item names the flag",
        ingest,
        "--on-unknown-items skip",
        _set_cell("interactions.csv", 4, "item_id", "zz"),
    ),
    Case(
        "every interaction names an unknown item",
        ingest_new,
        "none of the 60 interactions names an item of the item table",
        lambda s: _inter(s).assign(item_id=lambda f: "X" + f["item_id"]).to_csv(s / "interactions.csv", index=False),
    ),
    Case(
        "rating not a number",
        ingest,
        "interactions.csv, data row 6",
        _set_cell("interactions.csv", 6, "rating", "five"),
    ),
    Case("empty items file", ingest_new, "items.csv", _write_bytes("items.csv", b"")),
    Case(
        "header-only interactions",
        ingest_new,
        "interactions.csv",
        _write_bytes("interactions.csv", b"user_id,item_id,rating,timestamp\n"),
    ),
    Case(
        "bad image template field",
        lambda w, s: _ingest_args(s) + ["--image-template", "{title}.jpg"],
        "--image-template",
    ),
    Case(
        "text template: unknown column, found before the interactions are read",
        lambda w, s: _ingest_args(s) + ["--text-template", "{title}. {colour}"],
        "items.csv: --text-template '{title}. {colour}' names a column the item table does not have: 'colour'; "
        "its columns are ['item_id', 'title', 'text', 'image']",
        _set_cell("interactions.csv", 2, "timestamp", "not a date"),  # would be the error if read first
    ),
    Case(
        "text template: attribute access",
        lambda w, s: _ingest_args(s) + ["--text-template", "{title.upper}"],
        "--text-template",
    ),
    Case("unknown importer", cli("ingest", "nosuch"), "nosuch"),
    Case(
        "negative min rating is fine, a word is not",
        lambda w, s: _ingest_args(s) + ["--min-rating", "high"],
        "--min-rating",
    ),
    Case(
        "on-unknown-items value", lambda w, s: _ingest_args(s) + ["--on-unknown-items", "ignore"], "--on-unknown-items"
    ),
    Case(
        "too many images missing",
        ingest_new,
        "--allow-missing-images",
        lambda s: [p.unlink() for p in sorted((s / "images").glob("*.jpg"))[:5]],
    ),
    # -- extract
    Case(
        "extract: unknown dataset", cli("extract", "--dataset", "nosuch", "--encoder", ENCODER), "no ingested catalog"
    ),
    Case(
        "extract: unknown encoder",
        cli("extract", "--dataset", "shop", "--encoder", "nosuch:x"),
        "unknown encoder 'nosuch'",
    ),
    Case(
        "extract: checkpoint missing",
        cli("extract", "--dataset", "shop", "--encoder", "clip:ViT-B-32@/nonexistent.pt"),
        "checkpoint /nonexistent.pt does not exist",
    ),
    Case(
        "extract: batch size -1",
        cli("extract", "--dataset", "shop", "--encoder", ENCODER, "--batch-size", "-1"),
        "--batch-size must be at least 1, got -1",
    ),
    Case(
        "extract: batch size 0",
        cli("extract", "--dataset", "shop", "--encoder", ENCODER, "--batch-size", "0"),
        "--batch-size must be at least 1, got 0",
    ),
    Case(
        "extract: negative workers",
        cli("extract", "--dataset", "shop", "--encoder", ENCODER, "--num-workers", "-2"),
        "--num-workers must be at least 0",
    ),
    Case(
        "extract: cuda without a GPU",
        cli("extract", "--dataset", "shop", "--encoder", ENCODER, "--device", "cuda"),
        "--device cuda: no CUDA GPU is visible",
    ),
    Case(
        "extract: not a device",
        cli("extract", "--dataset", "shop", "--encoder", ENCODER, "--device", "gpu0"),
        "--device gpu0: not a device torch knows",
    ),
    Case(
        "extract: unknown backend",
        cli("extract", "--dataset", "shop", "--encoder", ENCODER, "--backend", "tensorrt"),
        "--backend tensorrt: choose one of auto, torch, onnx",
    ),
    Case(
        "run: unknown extract backend",
        cli("run", "shop", "--encoder", ENCODER, "--extract-backend", "tensorrt"),
        "--extract-backend",
    ),
    # -- train / evaluate
    Case(
        "train: epochs 0",
        cli("train", "--dataset", "shop", "--model", "lightgcn", "--epochs", "0"),
        "--epochs must be at least 1, got 0",
    ),
    Case(
        "train: patience 0",
        cli("train", "--dataset", "shop", "--model", "lightgcn", "--patience", "0"),
        "--patience must be at least 1",
    ),
    Case(
        "train: cuda without a GPU",
        cli("train", "--dataset", "shop", "--model", "lightgcn", "--device", "cuda"),
        "--device cuda: no CUDA GPU is visible",
    ),
    Case(
        "train: unknown config section",
        cli("train", "--dataset", "shop", "--model", "lightgcn", "--set", "foo.bar=1"),
        "--set: config override 'foo.bar'",
    ),
    Case(
        "train: unknown config field",
        cli("train", "--dataset", "shop", "--model", "lightgcn", "--set", "nosuch=1"),
        "--set",
    ),
    Case(
        "train: bad value checked before extraction",
        cli(
            "train",
            "--dataset",
            "shop",
            "--model",
            "freedom",
            "--adapter",
            "befa",
            "--encoder",
            "minilm",
            "--set",
            "befa.t=abc",
        ),
        "--set befa.t=abc: input should be a valid number",
    ),
    Case("train: not a KEY=VALUE", cli("train", "--dataset", "shop", "--model", "lightgcn", "--set", "reg"), "--set"),
    Case(
        "train: unknown encoder before data",
        cli("train", "--dataset", "shop", "--model", "freedom", "--encoder", "nosuch:x"),
        "--encoder: unknown encoder 'nosuch'",
    ),
    Case(
        "evaluate: cuda without a GPU",
        cli("evaluate", "{run}", "--device", "cuda"),
        "--device cuda: no CUDA GPU is visible",
    ),
    Case("run: cuda without a GPU", cli("run", "shop", "--device", "cuda"), "--device cuda: no CUDA GPU is visible"),
    Case("run: epochs 0", cli("run", "shop", "--epochs", "0"), "epochs"),
    Case("train: unknown model", cli("train", "--dataset", "shop", "--model", "nosuch"), "unknown model 'nosuch'"),
    Case(
        "train: befa on a content-free model",
        cli("train", "--dataset", "shop", "--model", "lightgcn", "--adapter", "befa"),
        "--adapter befa: lightgcn uses no content features",
    ),
    Case(
        "train: unknown split",
        cli("train", "--dataset", "shop", "--model", "lightgcn", "--split", "nosuch"),
        "no such split",
    ),
    Case("train: unknown dataset", cli("train", "--dataset", "nosuch", "--model", "lightgcn"), "no ingested catalog"),
    Case("evaluate: not a run folder", cli("evaluate", "{src}"), "no run record (is this a run folder?)"),
    # -- split
    Case(
        "split: cold fraction out of range",
        cli("split", "shop", "--kind", "cold-items", "--cold-fraction", "1.5"),
        "--cold-fraction must be strictly between 0 and 1",
    ),
    Case("split: unknown kind", cli("split", "shop", "--kind", "nosuch"), "unknown split kind 'nosuch' (--kind)"),
    Case(
        "split: cold fraction on a random split",
        cli("split", "shop", "--cold-fraction", "0.2"),
        "--cold-fraction applies to --kind cold-items only",
    ),
    # -- run (the pipeline)
    Case("run: unknown model", cli("run", "shop", "--models", "nosuch"), "unknown model 'nosuch'"),
    Case("run: unknown encoder", cli("run", "shop", "--encoder", "nosuch:x"), "unknown encoder 'nosuch'"),
    Case(
        "run: recommend-run not planned",
        cli("run", "shop", "--models", "lightgcn", "--recommend-run", "mgcn-befa"),
        "--recommend-run (recommend_run) 'mgcn-befa' is not a run",
    ),
    # -- serving
    Case("recommend: k below 1", cli("recommend", "{run}", "--k", "0"), "--k must be at least 1"),
    Case(
        "recommend: unknown user",
        cli("recommend", "{run}", "--users", "nobody"),
        "--users: 1 users unknown to the run: 'nobody'",
    ),
    Case(
        "recommend: candidates file missing",
        cli("recommend", "{run}", "--candidates", "{src}/stock.txt"),
        "--candidates: no such file",
    ),
    Case("recommend: not a run folder", cli("recommend", "{src}"), "not a run folder (no run.json)"),
    Case(
        "similar: unknown item", cli("similar", "{run}", "--items", "zz"), "--items: 1 items unknown to the run: 'zz'"
    ),
    Case(
        "similar: unknown space",
        cli("similar", "{run}", "--items", "p1", "--space", "pixels"),
        "--space must be model or content",
    ),
    Case(
        "similar: content space of a content-free run",
        cli("similar", "{run}", "--items", "p1", "--space", "content"),
        "--space content: the run (lightgcn) used no content features",
    ),
    # -- export, fetch, gc
    Case(
        "export-mmrec: unknown split",
        cli("export-mmrec", "shop", "--split", "nosuch", "--dest", "{src}/out"),
        "no such split",
    ),
    Case(
        "fetch-images: concurrency 0",
        cli("fetch-images", "shop", "--concurrency", "0"),
        "--concurrency must be at least 1",
    ),
    Case("fetch-images: unknown catalog", cli("fetch-images", "nosuch"), "no ingested catalog"),
    Case("gc: negative age", cli("gc", "--older-than", "-5"), "--older-than must be >= 0"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_in_words_and_changes_nothing(world, tmp_path, case):
    src = tmp_path / "src"
    shutil.copytree(world["src"], src)
    case.edit(src)
    before = _state(world["home"])
    res = runner.invoke(app, case.args(world, src), env=world["env"])
    said = _said(res.output)
    assert res.exit_code == case.code, f"{case.name}: exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    assert case.message in said, f"{case.name}: expected {case.message!r} in\n{res.output}"
    assert "Traceback" not in said and res.exception is None or isinstance(res.exception, SystemExit)
    assert _state(world["home"]) == before, f"{case.name}: the state under BEFA_HOME changed"


def test_at_least_forty_cases():
    assert len(CASES) >= 40
