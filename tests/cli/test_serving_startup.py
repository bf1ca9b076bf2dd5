"""`befa recommend` and `befa similar` start without what scoring does not need: no Prefect,
no Ray, no PyG, no encoder library (features of a content model come from the store)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.data.ingest import ingest
from pipeline.data.splits import split_random
from pipeline.features.extract import extract_features
from pipeline.features.load import load_features
from pipeline.settings import get_settings
from pipeline.training.api import train_model
from storage.feature_store import FeatureStore
from tests.conftest import REPO
from tests.flows_data import make_small_catalog

NOT_NEEDED = (
    "prefect",
    "ray",
    "prefect_ray",
    "torch_geometric",
    "torch._dynamo",
    "transformers",
    "sentence_transformers",
    "open_clip",
    "timm",
    "torchvision",
)
ENCODER = "imagebind:tiny@random"


def _modules_after(code: str, env: dict[str, str]) -> list[str]:
    probe = code + f"\nimport sys\nprint('LOADED', sorted(m for m in {NOT_NEEDED!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return eval(out.stdout.strip().splitlines()[-1].removeprefix("LOADED "))  # a list literal we printed


@pytest.fixture(scope="module")
def trained(tmp_path_factory, datasets_root):
    tmp = tmp_path_factory.mktemp("serve-startup")
    settings = get_settings(home=tmp / "home", datasets_root=datasets_root)
    cat = make_small_catalog(tmp / "src", datasets_root, n_items=20, n_users=60)
    catalog, _ = ingest("generic", settings, name="shop", **cat.ingest_options())
    store = FeatureStore(settings.feature_store)
    extracted = extract_features(catalog, ENCODER, store, progress=False)
    features = load_features(catalog, store, {m: s.fingerprint for m, s in extracted.modalities.items()})
    run = tmp / "freedom"
    split = split_random(catalog, seed=1).save(catalog.splits_dir)  # a file: the run records it
    train_model(
        settings.catalog_dir("shop"),
        split,
        features,
        "freedom",
        {"embedding_dim": 8},
        run_dir=run,
        max_epochs=1,
        quiet=True,
    )
    env = {**os.environ, "BEFA_HOME": str(settings.home), "BEFA_DATASETS_ROOT": str(datasets_root)}
    return run, env


def test_the_serving_commands_import_nothing_scoring_does_not_need(trained):
    run, env = trained
    cli = "from typer.testing import CliRunner\nfrom pipeline.cli.main import app\n"
    for argv in (["recommend", "--help"], ["recommend", str(run), "--k", "5"], ["similar", str(run), "--k", "3"]):
        code = cli + f"r = CliRunner().invoke(app, {argv!r})\nassert r.exit_code == 0, r.output\n"
        assert _modules_after(code, env) == [], argv
    assert (run / "recommendations.parquet").exists() and (run / "similar-model.parquet").exists()
    assert _modules_after("import pipeline.cli.serving", env) == []
