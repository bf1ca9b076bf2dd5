"""Gate health (issue 25, part 3): BeFA's gate over every item, recorded every epoch of a
+BeFA run, and a collapsed gate flagged in the run record, the pipeline report, ``befa
train``'s output and the study's notes.

Data for the training run: a slice of MovieLens-100k (ratings >= 4, first 150 users), as in
``test_training.py``, with 8 random "text" dims as the content."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from models import get_model_class, make_config
from models.base import BeFAInput, ModelConfig, Recommender, TrainData
from models.befa import BeFA
from pipeline.cli import train as train_cli
from pipeline.data.catalog import build_catalog
from pipeline.data.splits import split_random
from pipeline.features.bundle import FeatureBundle
from pipeline.reporting.gate_section import collapse_lines, gate_section
from pipeline.reporting.pipeline_report import ReportContext, write_report
from pipeline.study.analysis import gate_notes
from pipeline.training.gate_health import (
    COLLAPSED,
    SPREAD_FLOOR,
    GateStats,
    gate_stats,
    is_collapsed,
    model_gate_stats,
)
from pipeline.training.prepare import prepare_data
from pipeline.training.record import EpochLog, RunRecord
from pipeline.training.trainer import RunResult, TrainerConfig, fit

DIM = 16


def _content(items: int = 200, dim: int = DIM, seed: int = 0) -> torch.Tensor:
    return torch.randn(items, dim, generator=torch.Generator().manual_seed(seed))


def _adapter(seed: int = 0) -> BeFA:
    torch.manual_seed(seed)
    return BeFA(DIM, t=1.0, dropout=0.3).eval()


# -- the statistics and the rule -------------------------------------------------------------
def test_a_gate_saturated_by_its_last_bias_is_flagged_collapsed():
    adapter = _adapter()
    with torch.no_grad():
        adapter.recombine.bias.fill_(20.0)  # sigmoid(20 + small) ~ 1.0 for every item and dimension
        stats = gate_stats(adapter.gate(_content()))
    assert stats.collapsed
    assert stats.share_high == 1.0 and stats.share_low == 0.0
    assert stats.mean == pytest.approx(1.0, abs=1e-6)
    assert stats.std_items < SPREAD_FLOOR


def test_a_random_adapter_selects_by_content_and_is_not_collapsed():
    with torch.no_grad():
        stats = gate_stats(_adapter().gate(_content()))
    assert not stats.collapsed
    assert 0.3 < stats.mean < 0.7
    assert stats.std_items > 10 * SPREAD_FLOOR
    assert stats.share_high == stats.share_low == 0.0


def test_the_spread_is_over_items_so_a_fixed_per_dimension_mask_is_collapsed():
    """A gate that differs between dimensions but not between items is a constant rescaling of E_i:
    its overall std is large, its spread over items zero."""
    adapter = _adapter()
    with torch.no_grad():
        adapter.recombine.weight.zero_()
        adapter.recombine.bias.copy_(torch.linspace(-3, 3, DIM))
        gate = adapter.gate(_content())
    stats = gate_stats(gate)
    assert gate.std() > 0.2  # over all values: looks alive
    assert stats.std_items == pytest.approx(0.0, abs=1e-7)
    assert stats.collapsed and stats.share_high == 0.0 and stats.share_low == 0.0


def test_gate_stats_by_hand():
    gate = torch.tensor([[0.995, 0.5], [0.995, 0.3], [0.005, 0.1], [0.995, 0.1]])
    stats = gate_stats(gate)
    assert stats.mean == pytest.approx(gate.mean().item())
    col0, col1 = gate[:, 0], gate[:, 1]
    std0, std1 = (col0 - col0.mean()).pow(2).mean().sqrt(), (col1 - col1.mean()).pow(2).mean().sqrt()
    assert stats.std_items == pytest.approx(((std0 + std1) / 2).item())  # population std, mean over dims
    assert stats.share_high == pytest.approx(3 / 8) and stats.share_low == pytest.approx(1 / 8)
    assert not stats.collapsed
    with pytest.raises(ValueError, match="items, dims"):
        gate_stats(torch.ones(4))


@pytest.mark.parametrize(
    ("std_items", "share_high", "share_low", "collapsed"),
    [
        (0.0, 0.0, 0.0, True),  # same gate for every item
        (9.9e-4, 0.0, 0.0, True),  # just under the spread floor
        (1e-3, 0.0, 0.0, False),  # at the floor: not collapsed
        (0.05, 0.995, 0.0, True),  # nearly all values open
        (0.05, 0.0, 0.995, True),  # nearly all values shut
        (0.05, 0.99, 0.0, False),  # 99% exactly is not "more than 99%"
        (0.05, 0.5, 0.49, False),  # binary but content-dependent: a working gate
        (0.011, 0.0, 0.0, False),  # an untrained gate on TikTok (issue 25)
    ],
)
def test_the_collapse_rule_on_hand_made_stats(std_items, share_high, share_low, collapsed):
    assert is_collapsed(std_items, share_high, share_low) is collapsed
    assert GateStats.of(0.5, std_items, share_high, share_low).collapsed is collapsed


# -- from a model -----------------------------------------------------------------------------
class Gated(Recommender):
    """A minimal content model with BeFA adapters (only what ``model_gate_stats`` reads)."""

    name = "gated"
    uses_content = True

    def __init__(self, data: TrainData, config: ModelConfig):
        super().__init__(data, config)
        self.item_embedding = nn.Parameter(torch.randn(data.num_items, DIM))
        self.content = {m: f[:, :DIM] for m, f in data.features.items()}
        if config.adapter == "befa":
            self.adapters = nn.ModuleDict({m: BeFA(DIM, dropout=0.5) for m in data.features})

    def befa_inputs(self, modalities=None):
        return {m: BeFAInput(c, self.item_embedding) for m, c in self.content.items()}


def _gated(adapter: str) -> Gated:
    torch.manual_seed(0)
    feats = {"image": _content(50, seed=1), "audio": _content(50, seed=2)}
    data = TrainData(4, 50, torch.tensor([0, 1]), torch.tensor([0, 1]), feats)
    return Gated(data, ModelConfig(adapter=adapter))


def test_model_gate_stats_every_modality_in_eval_mode_without_autograd_and_mode_restored():
    model = _gated("befa").train()
    first, second = model_gate_stats(model), model_gate_stats(model)
    assert set(first) == {"image", "audio"}
    assert first == second  # dropout (0.5) off: eval mode
    assert model.training  # put back
    with torch.no_grad():
        model.adapters["audio"].recombine.bias.fill_(-20.0)
    after = model_gate_stats(model)
    assert after["audio"].collapsed and after["audio"].share_low == 1.0
    assert not after["image"].collapsed


def test_a_model_without_befa_records_nothing():
    assert model_gate_stats(_gated("none")) is None
    assert model_gate_stats(nn.Linear(2, 2)) is None  # no config, no adapters


# -- a real training run ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def ml_slice(datasets_root, tmp_path_factory):
    raw = pd.read_csv(
        datasets_root / "movielens-100k-posters" / "ml-100k" / "u.data",
        sep="\t",
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    raw = raw[(raw["rating"] >= 4) & (raw["user_id"] <= 150)].assign(rating=1.0)
    ids = sorted(raw["item_id"].unique())
    items = pd.DataFrame({"item_id": [str(i) for i in ids], "title": "", "text": "", "image": None, "image_hash": None})
    catalog = build_catalog("ml-slice", items, raw)
    catalog.save(tmp_path_factory.mktemp("catalog"))
    split = split_random(catalog, seed=2024)
    feats = {"text": torch.randn(catalog.num_items, 8, generator=torch.Generator().manual_seed(0))}
    bundle = FeatureBundle(feats, {"text": torch.ones(catalog.num_items, dtype=torch.bool)}, {"text": "snap-gate"})
    return prepare_data(split, catalog.num_items, bundle, num_users=catalog.num_users)


@pytest.mark.parametrize("adapter", ["befa", "none"])
def test_a_two_epoch_run_records_the_gate_every_epoch_only_with_befa(ml_slice, tmp_path, adapter):
    model_cls = get_model_class("mgcn")
    config = make_config(model_cls, {"adapter": adapter, "embedding_dim": 16})
    trainer = TrainerConfig(max_epochs=2, patience=10, seed=7, quiet=True, num_threads=1, floor=False)
    fit(model_cls, config, ml_slice, tmp_path / "run", trainer)
    raw = json.loads((tmp_path / "run" / "run.json").read_text())
    rec = RunRecord.load(tmp_path / "run")
    assert len(raw["epochs"]) == len(rec.epochs) == 2
    if adapter == "none":
        assert all(e.get("gates") is None for e in raw["epochs"])
        assert rec.best_gates == {} and rec.gate_collapsed == {}
        return
    for epoch in raw["epochs"]:
        assert set(epoch["gates"]) == {"text"}
        stats = GateStats.model_validate(epoch["gates"]["text"])
        assert 0.0 < stats.mean < 1.0 and stats.std_items >= 0.0
        assert stats.collapsed == is_collapsed(stats.std_items, stats.share_high, stats.share_low)
    assert set(rec.gate_collapsed) == {"text"}
    assert rec.best_gates["text"] == next(e for e in rec.epochs if e.epoch == rec.best_epoch).gates["text"]


# -- reports ---------------------------------------------------------------------------------
OK = GateStats.of(0.52, 0.02, 0.0, 0.0)
SHUT = GateStats.of(1.0, 0.0, 1.0, 0.0)


def _record(tmp_path, model, adapter, gates_per_epoch, seed=1) -> RunRecord:
    run_dir = tmp_path / f"{model}-{adapter}-s{seed}"
    epochs = [
        EpochLog(epoch=i, loss=1.0, lr=1e-3, train_s=0.1, eval_s=0.05, valid={"recall@20": v}, gates=g)
        for i, (v, g) in enumerate(zip([0.1, 0.2, 0.15], gates_per_epoch))
    ]
    rec = RunRecord(
        model=model,
        config={"adapter": adapter, "befa": {"insertion": "forward"}},
        seed=seed,
        device="cpu",
        split_id="random-s1-abc",
        status="early_stopped",
        epochs=epochs,
        best_epoch=1,
        best_valid={"recall@20": 0.2},
        test={"recall@20": 0.2, "ndcg@20": 0.1, "recall@10": 0.1, "ndcg@10": 0.05},
    )
    rec.save(run_dir)
    return RunRecord.load(run_dir)


def test_the_record_says_whether_the_gate_collapsed_at_the_best_epoch(tmp_path):
    # healthy at epochs 0 and 2, collapsed (image) at the best epoch 1
    rec = _record(tmp_path, "bm3", "befa", [{"image": OK}, {"image": SHUT, "text": OK}, {"image": OK}])
    assert rec.gate_collapsed == {"image": True, "text": False}
    assert rec.best_gates["image"] == SHUT
    older = _record(tmp_path, "bm3", "befa", [None, None, None], seed=2)  # written before gate health
    assert older.gate_collapsed == {} and older.epochs[0].gates is None


def test_the_pipeline_report_shows_gate_health_and_the_collapse_line(tmp_path):
    runs = [
        _record(tmp_path, "bm3", "none", [None, None, None]),
        _record(tmp_path, "bm3", "befa", [{"image": OK}, {"image": SHUT, "text": OK}, {"image": OK}]),
        _record(tmp_path, "mgcn", "befa", [{"image": OK}, {"image": OK}, {"image": SHUT}]),  # collapsed after best
    ]
    files = write_report(tmp_path / "report", [r.run_dir for r in runs], ReportContext(title="gates"))
    md = files.report_md.read_text()
    assert "## Gate health" in md
    section = md.split("## Gate health")[1].split("\n## ")[0]
    assert "| bm3 +BeFA (forward) | image | 1 | 1.000 | 0.0000 | 100.0% | 0.0% | **COLLAPSED** |" in section
    assert "| bm3 +BeFA (forward) | text | 1 | 0.520 | 0.0200 | 0.0% | 0.0% | ok |" in section
    assert "| mgcn +BeFA (forward) | image | 1 | 0.520 | 0.0200 | 0.0% | 0.0% | ok |" in section
    assert f"bm3 +BeFA (forward), image: {COLLAPSED}" in section
    assert COLLAPSED == "BeFA's gate collapsed: the adapter is off"
    warnings = [line for line in section.splitlines() if line.startswith("- **")]
    assert len(warnings) == 1  # mgcn's gate collapsed after its best epoch: no warning
    assert "bm3 base" not in section  # base runs have no gate
    # under the results table: bm3's +BeFA number is not read as BeFA's effect
    results = md.split("## Test metrics")[1].split("\n## ")[0]
    assert f"bm3 +BeFA (image): {COLLAPSED}; its gain is not BeFA's effect" in results
    assert "mgcn +BeFA" not in results


def test_no_befa_run_no_section_and_older_records_say_so(tmp_path):
    base = _record(tmp_path, "bm3", "none", [None, None, None])
    assert gate_section([base]) == []
    older = _record(tmp_path, "bm3", "befa", [None, None, None])
    assert gate_section([base, older])[-1] == "No gate recorded (runs written before gate health): bm3 +BeFA (forward)"


def test_befa_train_prints_the_collapse_warning(tmp_path, capsys):
    rec = _record(tmp_path, "bm3", "befa", [{"image": OK}, {"image": SHUT}, {"image": OK}])
    assert len(collapse_lines([rec])) == 1
    train_cli._print_result(RunResult(run_dir=tmp_path, record=rec, model=None))
    out = " ".join(capsys.readouterr().out.split())
    assert f"warning: bm3 +BeFA (forward), image: {COLLAPSED}" in out
    healthy = _record(tmp_path, "bm3", "befa", [{"image": OK}] * 3, seed=2)
    train_cli._print_result(RunResult(run_dir=tmp_path, record=healthy, model=None))
    assert COLLAPSED not in capsys.readouterr().out


def test_the_study_notes_a_model_whose_befa_runs_collapsed(tmp_path):
    runs = {
        ("bm3", "none"): [_record(tmp_path, "bm3", "none", [None] * 3, seed=s) for s in (1, 2)],
        ("bm3", "befa"): [
            _record(tmp_path, "bm3", "befa", [{"image": OK}, {"image": SHUT, "text": OK}, {"image": OK}], seed=1),
            _record(tmp_path, "bm3", "befa", [{"image": OK}, {"image": OK, "text": OK}, {"image": OK}], seed=2),
        ],
        ("mgcn", "befa"): [_record(tmp_path, "mgcn", "befa", [{"image": OK}] * 3, seed=1)],
    }
    assert gate_notes(runs, ["bm3", "mgcn", "freedom"]) == [
        f"bm3 +BeFA: {COLLAPSED} (image in 1 of 2 seeds); its gain is not BeFA's effect there."
    ]


# -- an inert adapter: a term weighted to nothing ---------------------------------------------
@pytest.mark.parametrize(
    ("model", "overrides", "inert"),
    [
        ("freedom", {"reg": 0.0, "befa.insertion": "loss"}, "reg = 0 skips"),
        ("freedom", {"reg": 0.0, "befa.insertion": "content"}, "reg = 0 skips"),
        ("freedom", {"reg": 0.0}, None),  # forward: the adapter is on the item view whatever reg is
        ("bm3", {"cl_weight": 0.0, "befa.insertion": "loss"}, "cl_weight = 0 skips"),
        ("bm3", {"befa.insertion": "content"}, None),
    ],
)
def test_an_adapter_that_reaches_nothing_is_recorded_and_reported_as_inert(ml_slice, tmp_path, model, overrides, inert):
    """The gate of an adapter that enters only terms weighted to 0 never trains, so it does not
    collapse either: the record names why it is inert and the report says so instead of a gain."""
    model_cls = get_model_class(model)
    config = make_config(model_cls, {"adapter": "befa", "embedding_dim": 16, **overrides})
    trainer = TrainerConfig(max_epochs=1, patience=10, seed=7, quiet=True, num_threads=1, floor=False)
    fit(model_cls, config, ml_slice, tmp_path / "run", trainer)
    rec = RunRecord.load(tmp_path / "run")
    if inert is None:
        assert rec.befa_inert is None and not any("inert" in line for line in collapse_lines([rec]))
        return
    assert inert in rec.befa_inert
    assert any(line.startswith(f"{model} +BeFA") and "BeFA is inert" in line for line in collapse_lines([rec]))
    files = write_report(tmp_path / "report", [tmp_path / "run"], ReportContext())
    md = files.report_md.read_text()
    assert f"{model} +BeFA: BeFA is inert in this run" in md and inert in md
