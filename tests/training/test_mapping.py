"""Content-to-behaviour mappers (models.mapper_regression, models.mapper_aldi) and their use
(pipeline.training.mapping, pipeline.evaluation.calibration, befa map)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from models import MAPPERS
from models.content_mapper import MapperData
from pipeline.cli.main import app
from pipeline.evaluation.calibration import QuantileCalibration
from pipeline.evaluation.content_blend import BLEND_WEIGHTS
from pipeline.reporting.pipeline_report import ReportContext, write_report
from pipeline.training.mapping import (
    CALIBRATION_MODES,
    MAPPING,
    WARM_BUDGET,
    MappingRecord,
    fit_mapper,
    load_mapper,
    mapped_items,
)
from tests.job.test_small_catalogs import TEXT_ENCODER, _write_csvs

runner = CliRunner()
N_USERS, N_ITEMS, D = 40, 30, 16
NEW = 29  # the new item: cluster A (even), no behaviour


def _two_clusters() -> MapperData:
    """Users and items in two clusters (even = A, odd = B). The trained model's item and user
    representations point along their cluster's axis; content = cluster centre + noise.
    Item 29 is new: its representation is untrained noise, its content says A."""
    g = torch.Generator().manual_seed(0)
    cluster = torch.arange(N_ITEMS) % 2
    cluster[NEW] = 0
    centres = torch.randn(2, D, generator=g) * 3
    content = {"image": centres[cluster] + 0.5 * torch.randn(N_ITEMS, D, generator=g)}
    axis = torch.eye(2)
    items = axis[cluster] + 0.05 * torch.randn(N_ITEMS, 2, generator=g)
    items[NEW] = torch.randn(2, generator=g)  # what a never-trained ID embedding gives
    users = axis[torch.arange(N_USERS) % 2]
    pairs = [(u, i) for u in range(N_USERS) for i in range(N_ITEMS - 1) if i % 2 == u % 2 and (u + i) % 3 == 0]
    warm = torch.ones(N_ITEMS, dtype=torch.bool)
    warm[NEW] = False
    return MapperData(
        content, users, items, warm, torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    )


@pytest.mark.parametrize("method", sorted(MAPPERS))
def test_a_new_item_of_cluster_a_reaches_the_lists_of_a_users_only(method):
    data = _two_clusters()
    mapper, fit = fit_mapper(method, data, {"steps": 150, "batch_size": 64})
    assert fit.method == method and fit.seconds > 0 and -1 <= fit.warm_cosine <= 1
    items, mapped = mapped_items(mapper, data)
    assert torch.equal(items[data.warm], data.item_emb[data.warm])  # warm rows are the model's own
    calib = QuantileCalibration(data.user_emb, data.item_emb, mapped, data.warm, ~data.warm, mode="quantile")
    scores = calib.rescore(torch.arange(N_USERS), data.user_emb @ items.T)
    a_users = torch.arange(N_USERS) % 2 == 0
    # A users: the 15 warm A items and the new one lead their lists; B users: their 14 B items
    in_a_lists = (scores[a_users].topk(16, dim=1).indices == NEW).any(1)
    in_b_lists = (scores[~a_users].topk(14, dim=1).indices == NEW).any(1)
    assert bool(in_a_lists.all()) and not bool(in_b_lists.any())


def test_calibration_keeps_the_warm_items_order_and_is_monotone_per_user():
    g = torch.Generator().manual_seed(1)
    users, items, mapped = (
        torch.randn(8, 4, generator=g),
        torch.randn(50, 4, generator=g),
        torch.randn(50, 4, generator=g),
    )
    new = torch.zeros(50, dtype=torch.bool)
    new[40:] = True
    calib = QuantileCalibration(users, items, mapped, ~new, new, mode="quantile")
    raw = users @ items.T
    out = calib.rescore(torch.arange(8), raw.clone())
    assert torch.equal(out[:, ~new], raw[:, ~new])  # warm scores, hence their order, untouched
    mapped_raw = users @ mapped[new].T
    order = mapped_raw.argsort(dim=1)
    assert bool((out[:, new].gather(1, order).diff(dim=1) >= -1e-6).all())  # monotone in the raw mapped score
    warm_true = raw[:, ~new]
    assert bool((out[:, new] >= warm_true.min(1, keepdim=True).values - 1e-6).all())
    assert bool((out[:, new] <= warm_true.max(1, keepdim=True).values + 1e-6).all())  # on the warm scale


def test_expected_mode_pulls_an_uninformative_mapper_to_the_middle():
    g = torch.Generator().manual_seed(2)
    users, items = torch.randn(30, 4, generator=g), torch.randn(200, 4, generator=g)
    mapped = torch.randn(200, 4, generator=g)  # unrelated to the items: the mapper knows nothing
    new = torch.zeros(200, dtype=torch.bool)
    new[150:] = True
    calib = ~new
    expected = QuantileCalibration(users, items, mapped, calib, new, mode="expected")
    quantile = QuantileCalibration(users, items, mapped, calib, new, mode="quantile")
    assert float((expected.g - 0.5).abs().max()) < 0.2  # E[true quantile | mapped quantile] ~ 1/2
    raw = users @ mapped[new].T
    top = (users @ items[~new].T).quantile(0.95, dim=1, keepdim=True)
    # the best new items reach a user's top 5% by quantile matching, never by expectation
    assert bool((quantile.calibrate(torch.arange(30), raw) > top).any())
    assert not bool((expected.calibrate(torch.arange(30), raw) > top).any())


def test_a_cold_split_run_gets_its_mappers_and_befa_map_refits_them(tmp_path):
    env = {"BEFA_HOME": str(tmp_path / "home")}
    files = _write_csvs(tmp_path / "src")
    ingest = ["ingest", "generic", "--items", files["items"], "--interactions", files["interactions"], "--as", "mini"]
    assert runner.invoke(app, ingest, env=env).exit_code == 0
    split = runner.invoke(app, ["split", "mini", "--kind", "cold-items", "--cold-fraction", "0.2"], env=env)
    assert split.exit_code == 0, split.output
    run_dir = tmp_path / "run"
    train = ["train", "--dataset", "mini", "--model", "freedom", "--encoder", TEXT_ENCODER, "--split",
             "cold-items-f20-s2024", "--epochs", "2", "--set", "embedding_dim=8", "--device", "cpu",
             "--run-dir", str(run_dir)]  # fmt: skip
    trained = runner.invoke(app, train, env={**env, "COLUMNS": "200"})
    assert trained.exit_code == 0, trained.output
    assert "cold = warm items masked" in trained.output and "mapper: aldi" in trained.output
    record = MappingRecord.load(run_dir)
    assert set(record.methods) == {"regression", "aldi"}
    for m in record.methods.values():
        assert m.mapped_items > 0 and m.cold_setting["test"].users > 0
        assert 0 <= m.hybrid_groups["test"]["cold"].top_share <= 1
        assert (run_dir / "mappers" / f"{m.method}.per_user.parquet").exists()
        # relevance is the default, learned on valid from the split's cold items, and every mode is recorded
        assert m.calibration == "relevance" and set(m.hybrid_by_calibration) == set(CALIBRATION_MODES)
        assert m.relevance.source == "cold" and sum(m.relevance.new_counts) > 0 and m.relevance.k > 0
        assert m.hybrid_groups == m.hybrid_by_calibration["relevance"]
        # the content floor's share, chosen on valid cold-setting recall, is what the cold setting used
        assert set(m.blend_valid) == {str(w) for w in BLEND_WEIGHTS} and m.cbf_weight in BLEND_WEIGHTS
        assert m.blend_valid[str(m.cbf_weight)] == max(m.blend_valid.values())
        assert m.cold_setting["valid"].metrics["recall@20"] == pytest.approx(m.blend_valid[str(m.cbf_weight)])
        assert m.relevance.warm_budget == WARM_BUDGET and 0 <= m.relevance.scale <= 1
    report = write_report(tmp_path / "report", [run_dir], ReportContext())
    text = report.report_md.read_text()
    assert "## New items: the cold-items split" in text and "| mapper: aldi | cold |" in text
    at = [text.index(f"| mapper: aldi ({mode}) | hybrid |") for mode in CALIBRATION_MODES]
    assert at == sorted(at)  # a row per mode, the default first
    mapper = load_mapper(run_dir, "aldi")
    assert mapper.modalities == ["text"]
    again = runner.invoke(
        app, ["map", str(run_dir), "--methods", "regression", "--set", "regression.steps=20"], env=env
    )
    assert again.exit_code == 0, again.output
    redone = json.loads((run_dir / MAPPING).read_text())["methods"]["regression"]
    assert redone["fit"]["steps"] == 20 and redone["config"]["steps"] == 20
    # the warm budget: 1 never limits the relevance placement; 0 keeps the warm items' VALID recall
    # at that of the lists without new items, which any new item can only lower
    valid_warm = {}
    for budget in ("1", "0"):
        args = ["map", str(run_dir), "--methods", "regression", "--set", "regression.steps=20", "--warm-budget", budget]
        again = runner.invoke(app, args, env=env)
        assert again.exit_code == 0, again.output
        assert "blended with ItemKNN-CBF at w = " in again.output and "warm budget" in again.output
        entry = MappingRecord.load(run_dir).methods["regression"]
        assert entry.relevance.warm_budget == float(budget)
        valid_warm[budget] = entry.hybrid_by_calibration["relevance"]["valid"]["warm"].metrics["recall@20"]
        if budget == "1":
            assert entry.relevance.scale == 1.0
    assert valid_warm["0"] >= valid_warm["1"]
    bad = runner.invoke(app, ["map", str(run_dir), "--warm-budget", "2"], env=env)
    assert bad.exit_code == 2 and "--warm-budget" in bad.output
    bad = runner.invoke(app, ["map", str(run_dir), "--set", "aldi.nope=1"], env=env)
    assert bad.exit_code == 2 and "aldi has no setting 'nope'" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, ["map", str(run_dir), "--methods", "knn"], env=env)
    assert bad.exit_code == 2 and "--methods" in bad.output
