"""The BeFA study: paired tests, search budget, the whole tiny study (sweep, ablation,
sparsity, inspection, report), resuming, and honest verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import stats

from models.befa import befa_parameter_count
from pipeline.job.params import PipelineParams
from pipeline.job.watch import REGISTRY, register_catalog, registered_params, watch_dir
from pipeline.settings import get_settings
from pipeline.study.analysis import verdict
from pipeline.study.params import StudyError, StudyParams, validate_study
from pipeline.study.run import run_study
from pipeline.study.stats import holm, paired_frame, paired_test
from tests.study_data import gain_row, run_tiny_study, sig_row, tiny_study_params


# -- statistics -------------------------------------------------------------------------
def _per_user(values: list[float], users: list[int] | None = None) -> pd.DataFrame:
    users = users if users is not None else list(range(len(values)))
    return pd.DataFrame({"part": "test", "user_idx": users, "recall@20": values, "ndcg@20": values})


def test_paired_test_matches_scipy_and_pools_seeds_per_user():
    rng = np.random.default_rng(0)
    base = [rng.random(30) for _ in range(3)]
    befa = [b + rng.normal(0.05, 0.1, 30) for b in base]
    pairs = paired_frame([_per_user(list(b)) for b in base], [_per_user(list(a)) for a in befa], "recall@20")
    assert len(pairs) == 90 and pairs["seed"].nunique() == 3
    res = paired_test(pairs, "recall@20", "user_mean")
    mb, ma = np.mean(base, axis=0), np.mean(befa, axis=0)  # per-user mean over seeds
    assert res.n_pairs == 30
    assert res.p_ttest == pytest.approx(stats.ttest_rel(ma, mb).pvalue)
    assert res.p_wilcoxon == pytest.approx(stats.wilcoxon(ma, mb).pvalue)
    assert res.mean_diff == pytest.approx(float((ma - mb).mean()))
    concat = paired_test(pairs, "recall@20", "concat")
    assert concat.n_pairs == 90
    assert concat.p_ttest == pytest.approx(stats.ttest_rel(np.concatenate(befa), np.concatenate(base)).pvalue)


def test_paired_test_edge_cases_and_alignment():
    same = paired_frame([_per_user([0.0, 0.5, 1.0])], [_per_user([0.0, 0.5, 1.0])], "recall@20")
    res = paired_test(same, "recall@20")
    assert res.p_wilcoxon == 1.0 and res.p_ttest == 1.0 and res.wins == res.losses == 0
    # users are matched by id, not by row order; a user missing on one side is dropped
    pairs = paired_frame([_per_user([0.1, 0.2, 0.3], [5, 6, 7])], [_per_user([0.3, 0.2], [7, 5])], "recall@20")
    assert sorted(pairs["user_idx"]) == [5, 7]
    assert dict(zip(pairs["user_idx"], pairs["befa"] - pairs["base"])) == pytest.approx({5: 0.1, 7: 0.0})
    with pytest.raises(ValueError, match="as many base runs"):
        paired_frame([_per_user([0.1])], [], "recall@20")
    with pytest.raises(ValueError, match="lacks 'map@20'"):
        paired_frame([_per_user([0.1])], [_per_user([0.2])], "map@20")


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None], nan_ok=True)
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_verdict_reports_negative_and_null_results_plainly():
    def gains(r):
        return [gain_row(m, met, r[m]) for m in r for met in ("recall@20", "ndcg@20")]

    def sig(d, significant):
        return [sig_row(m, met, d[m], significant[m]) for m in d for met in ("recall@20", "ndcg@20")]

    hurt = verdict(gains({"a": -0.1, "b": -0.05}), sig({"a": -0.01, "b": -0.01}, {"a": True, "b": False}), 0.05)
    assert hurt.startswith("BeFA hurt on this data") and "-7.50%" in hurt and "+9.07%" in hurt
    null = verdict(gains({"a": 0.02, "b": -0.01}), sig({"a": 0.01, "b": -0.01}, {"a": False, "b": False}), 0.05)
    assert null.startswith("No significant effect")
    helped = verdict(gains({"a": 0.2, "b": 0.1}), sig({"a": 0.01, "b": 0.01}, {"a": True, "b": True}), 0.05)
    assert helped.startswith("BeFA helped") and "+15.00%" in helped
    mixed = verdict(gains({"a": 0.2, "b": -0.1}), sig({"a": 0.01, "b": -0.01}, {"a": True, "b": True}), 0.05)
    assert mixed.startswith("Mixed result")


# -- search budget / validation -------------------------------------------------------
def test_validation_names_the_problem(tmp_path, datasets_root):
    settings = get_settings(home=tmp_path / "home", datasets_root=datasets_root)
    with pytest.raises(StudyError, match="uses no content features"):
        validate_study({"models": ["lightgcn", "freedom"], "focus_model": "freedom"}, settings)
    with pytest.raises(StudyError, match="grid for freedom"):
        validate_study({"models": ["freedom"], "grid": {"freedom": {"no_such": [1]}}}, settings)
    with pytest.raises(StudyError, match="focus_model"):
        validate_study({"models": ["mgcn"], "focus_model": "freedom"}, settings)
    with pytest.raises(StudyError, match="train_fractions"):
        validate_study({"train_fractions": [1.0, 0.0]}, settings)
    with pytest.raises(StudyError, match="'Audio!' is not a modality name"):
        validate_study({"modality_sets": [["Audio!"]]}, settings)
    with pytest.raises(StudyError, match="an empty set"):
        validate_study({"modality_sets": [[]]}, settings)
    # any modality name (an MMRec catalog's audio, video): a set the features lack is skipped when the study runs
    assert validate_study({"modality_sets": [["image", "audio"]]}, settings).modality_sets == [["image", "audio"]]
    assert StudyParams().seeds == [999, 1000, 1001] and StudyParams().sweep_t == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]


# -- the whole tiny study ----------------------------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory, datasets_root):
    root = tmp_path_factory.mktemp("study")
    cat, settings, result = run_tiny_study(root, datasets_root)
    return cat, settings, result, Path(result.folder)


def test_main_table_every_model_both_ways_every_seed(study):
    _, _, result, folder = study
    frame = pq.read_table(folder / "results.parquet").to_pandas()
    main = frame[(frame["experiment"] == "main") & (frame["split"] == "test")]
    counts = main[main["metric"] == "recall@20"].groupby(["model", "adapter"])["seed"].apply(sorted)
    assert {k: v for k, v in counts.items()} == {
        (m, a): [1, 2] for m in ("bm3", "lattice", "freedom", "mgcn") for a in ("none", "befa")
    }
    # one row per model x adapter x seed x metric; values are the runs' own test metrics
    assert not main.duplicated(["model", "adapter", "seed", "metric"]).any()
    for _, row in main[main["metric"] == "ndcg@20"].iterrows():
        rec = json.loads((Path(row["run_dir"]) / "run.json").read_text())
        assert row["value"] == pytest.approx(rec["test"]["ndcg@20"]) and rec["seed"] == row["seed"]
    # the summary is mean ± std over the seeds
    summary = pd.DataFrame(result.main)
    got = summary[
        (summary["model"] == "mgcn") & (summary["adapter"] == "befa") & (summary["metric"] == "recall@20")
    ].iloc[0]
    vals = main[(main["model"] == "mgcn") & (main["adapter"] == "befa") & (main["metric"] == "recall@20")]["value"]
    assert got["mean"] == pytest.approx(vals.mean()) and got["std"] == pytest.approx(vals.std(ddof=1)) and got["n"] == 2


def test_significance_uses_the_runs_per_user_metrics(study):
    _, _, result, folder = study
    sig = {(s.model, s.metric): s for s in result.significance}
    assert set(sig) == {(m, k) for m in ("bm3", "lattice", "freedom", "mgcn") for k in ("recall@20", "ndcg@20")}
    frame = pq.read_table(folder / "results.parquet").to_pandas()
    main = frame[(frame["experiment"] == "main") & (frame["split"] == "test") & (frame["model"] == "lattice")]
    dirs = {
        a: [main[(main["adapter"] == a) & (main["seed"] == s)]["run_dir"].iloc[0] for s in (1, 2)]
        for a in ("none", "befa")
    }
    tabs = {a: [pd.read_parquet(Path(d) / "per_user.parquet") for d in ds] for a, ds in dirs.items()}
    base = np.mean([t[t["part"] == "test"].sort_values("user_idx")["ndcg@20"].to_numpy() for t in tabs["none"]], axis=0)
    befa = np.mean([t[t["part"] == "test"].sort_values("user_idx")["ndcg@20"].to_numpy() for t in tabs["befa"]], axis=0)
    s = sig[("lattice", "ndcg@20")]
    assert s.n_pairs == base.size
    assert s.mean_diff == pytest.approx(float((befa - base).mean()))
    if np.any(befa != base):
        assert s.p_wilcoxon == pytest.approx(stats.wilcoxon(befa, base).pvalue)
    assert all(0 <= x.p_wilcoxon_holm <= 1 for x in result.significance if x.p_wilcoxon_holm is not None)


def test_search_is_valid_only_and_within_budget(study):
    _, _, _, folder = study
    searches = json.loads((folder / "search.json").read_text())
    assert len(searches) == 8
    for key, s in searches.items():
        assert len(s["trials"]) == 2  # the same budget for base and +BeFA
        assert s["trials"][0]["point"] == {}  # the model's defaults are always tried first
        assert s["sampler"] == {"name": "TPESampler", "seed": 0, "n_startup_trials": 2} and "lr" in s["grid"]
        scores = [t["valid"]["recall@20"] for t in s["trials"]]
        assert scores[s["winner"]] == max(scores)
        for t in s["trials"]:  # no test metric reaches the search record
            assert set(t) == {"point", "params", "overrides", "valid", "run_dir", "best_epoch", "state"}
        if key.endswith("/befa"):
            assert set(s["grid"]) >= {"befa.t", "lr"}


def test_report_has_the_selection_bias_line_from_the_search_trials(study):
    _, _, _, folder = study
    searches = json.loads((folder / "search.json").read_text())
    rows = json.loads((folder / "study.json").read_text())["selection_bias"]
    assert {(r["model"], r["metric"]) for r in rows} == {
        (m, k) for m in ("bm3", "lattice", "freedom", "mgcn") for k in ("recall@20", "ndcg@20")
    }
    for r in (r for r in rows if r["metric"] == "recall@20"):
        for adapter, side in (("none", "base"), ("befa", "befa")):
            s = searches[f"{r['model']}/{adapter}"]
            tests = [json.loads((Path(t["run_dir"]) / "run.json").read_text())["test"] for t in s["trials"]]
            assert r[f"test_picked_{side}"] == max(t["recall@20"] for t in tests)  # the paper's pick
            assert r[f"valid_picked_{side}"] == tests[s["winner"]]["recall@20"]  # the study's pick
    md, html = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    assert "### Selection bias" in md and "picked on TEST, as the paper's code does" in md
    assert "id='selection-bias'" in html and "gain, picked on test" in html


def test_overhead_and_time_columns(study):
    _, _, _, folder = study
    data = json.loads((folder / "study.json").read_text())
    searches = json.loads((folder / "search.json").read_text())
    for o in data["overhead"]:
        t = float(searches[f"{o['model']}/befa"]["winner_overrides"].get("befa.t", 1.0))
        assert o["adapter_params"] == 2 * befa_parameter_count(8, t)  # two modalities, d = 8
        assert o["adapter_overhead_without_tables"] == pytest.approx(
            o["adapter_params"] / o["base_params_without_tables"]
        )
        assert (
            o["base_params_with_tables"] == o["base_params_without_tables"] + 40 * 16 * 2
        )  # 40 items x 16-d x 2 tables
        assert o["epoch_s_base"] > 0 and o["epoch_s_befa"] > 0
    mgcn = next(o for o in data["overhead"] if o["model"] == "mgcn")
    assert mgcn["net_overhead_without_tables"] < mgcn["adapter_overhead_without_tables"]  # BeFA replaces the purifier


def test_sweep_ablation_and_sparsity(study):
    _, settings, result, folder = study
    frame = pq.read_table(folder / "results.parquet").to_pandas()
    test = frame[(frame["split"] == "test") & (frame["metric"] == "recall@20")]
    sweep = test[test["experiment"] == "sweep_t"]
    assert sorted(sweep[sweep["adapter"] == "befa"]["t"].unique()) == [0.25, 1.0, 4.0]
    assert (sweep.groupby("setting")["seed"].count() == 2).all()
    for t in (0.25, 4.0):  # the hidden size really changed
        rd = sweep[(sweep["t"] == t)]["run_dir"].iloc[0]
        assert json.loads((Path(rd) / "run.json").read_text())["parameters"][
            "params_adapter"
        ] == 2 * befa_parameter_count(8, t)
    abl = test[test["experiment"] == "ablation"]
    assert set(abl["setting"]) == {"image", "text", "image+text"}
    for setting, mods in (("image", ["image"]), ("text", ["text"])):
        rd = abl[abl["setting"] == setting]["run_dir"].iloc[0]
        assert sorted(json.loads((Path(rd) / "run.json").read_text())["feature_snapshots"]) == mods
    sp = test[test["experiment"] == "sparsity"]
    assert set(sp["setting"]) == {"train=100%", "train=50%"}
    half = sp[sp["setting"] == "train=50%"]["run_dir"].iloc[0]
    full = sp[sp["setting"] == "train=100%"]["run_dir"].iloc[0]
    c_half = json.loads((Path(half) / "run.json").read_text())["data_counts"]
    c_full = json.loads((Path(full) / "run.json").read_text())["data_counts"]
    assert c_half["train"] < 0.75 * c_full["train"]
    assert (c_half["valid"], c_half["test"]) == (c_full["valid"], c_full["test"])  # evaluation fixed
    for name in ("main.png", "sweep_t.png", "ablation.png", "sparsity.png"):
        assert (folder / "plots" / name).stat().st_size > 5000


def test_the_authors_arm_runs_with_lattice_among_the_models(study):
    """LATTICE as the authors ran it (pipeline.study.authors_arm): base LATTICE (the main table's
    runs), MGCN's authors skeleton +BeFA and with the purifier gate, every seed; in both reports."""
    _, _, _, folder = study
    frame = pq.read_table(folder / "results.parquet").to_pandas()
    arm = frame[(frame["experiment"] == "authors_arm") & (frame["split"] == "test") & (frame["metric"] == "recall@20")]
    assert arm.groupby(["setting", "model", "adapter"])["seed"].apply(sorted).to_dict() == {
        ("authors_befa", "mgcn", "befa"): [1, 2],
        ("authors_purifier", "mgcn", "none"): [1, 2],
        ("lattice", "lattice", "none"): [1, 2],
    }
    main = frame[(frame["experiment"] == "main") & (frame["model"] == "lattice") & (frame["adapter"] == "none")]
    assert set(arm[arm["setting"] == "lattice"]["run_dir"]) == set(main["run_dir"])  # reused, not retrained
    for run_dir in arm[arm["model"] == "mgcn"]["run_dir"]:
        config = json.loads((Path(run_dir) / "run.json").read_text())["config"]
        assert config.get("skeleton") == "authors" or config["befa"]["variant"] == "authors"
    study_json = json.loads((folder / "study.json").read_text())["authors_arm"]
    assert len(study_json["comparisons"]) == 6 and {c["comparison"] for c in study_json["comparisons"]} == {
        "(b) vs (a)",
        "(b) vs (c)",
        "(c) vs (a)",
    }
    for report in ("report.md", "report.html"):
        text = (folder / report).read_text()
        assert "LATTICE as the authors ran it" in text and "the adapter on the authors" in text


def test_the_insertion_ablation_trains_loss_and_content_and_plots_the_trained_gates(study):
    """Every model's +BeFA winner with loss and content (MGCN: content only), every seed; forward is
    the main table's runs; gate health in the rows; the gates rebuilt from the first seed's weights."""
    _, _, _, folder = study
    frame = pq.read_table(folder / "results.parquet").to_pandas()
    test = frame[(frame["split"] == "test") & (frame["metric"] == "recall@20")]
    arm = test[test["experiment"] == "insertions"]
    expected = {(m, s): [1, 2] for m in ("bm3", "lattice", "freedom") for s in ("base", "forward", "loss", "content")}
    expected.update({("mgcn", s): [1, 2] for s in ("base", "forward", "content")})
    assert arm.groupby(["model", "setting"])["seed"].apply(sorted).to_dict() == expected
    main = test[(test["experiment"] == "main") & (test["adapter"] == "befa")]
    assert set(arm[arm["setting"] == "forward"]["run_dir"]) == set(main["run_dir"])  # reused, not retrained
    for run_dir, setting in zip(arm["run_dir"], arm["setting"]):
        config = json.loads((Path(run_dir) / "run.json").read_text())["config"]
        assert config["adapter"] == ("none" if setting == "base" else "befa")
        assert setting == "base" or config["befa"]["insertion"] == setting
    ablation = json.loads((folder / "study.json").read_text())["insertions"]
    assert list(ablation["skipped"]) == ["mgcn/loss"]
    assert len(ablation["arms"]) == 11 * 2 and len(ablation["gates"]) == 11 * 2  # 11 arms, 2 metrics / modalities
    assert all(g["seeds"] == 2 and 0 < g["mean"] < 1 for g in ablation["gates"])
    assert {(d["model"], d["insertion"], d["modality"]) for d in ablation["distributions"]} == {
        (g["model"], g["insertion"], g["modality"]) for g in ablation["gates"]
    }
    for d in ablation["distributions"]:
        assert d["seed"] == 1 and d["values"] == sum(d["counts"]) == 40 * 8  # every item x dimension
        assert 0 <= d["q05"] <= d["q50"] <= d["q95"] <= 1
    assert (folder / "plots" / "insertion_gates.png").stat().st_size > 20_000
    for report in ("report.md", "report.html"):
        text = (folder / report).read_text()
        assert "Where BeFA acts: the insertion ablation" in text and "plots/insertion_gates.png" in text


def test_inspection_gates_cosines_and_top10(study):
    _, _, _, folder = study
    ins = json.loads((folder / "inspection.json").read_text())
    assert ins["model"] == "freedom" and len(ins["items"]) == 6
    for m, s in ins["summary"].items():
        assert (
            0 < s["gate_mean"] < 1
            and -1 <= s["cos_content_adapted_mean"] <= 1
            and -1 <= s["cos_behaviour_adapted_mean"] <= 1
        )
    assert len(ins["comparisons"]) == 3
    for c in ins["comparisons"]:
        assert len(c["base"]) == len(c["befa"]) == 10 and c["history"]
        for card in c["base"] + c["befa"] + c["history"]:
            assert card["poster"] and (folder / card["poster"]).exists()
        train_items = {h["item_idx"] for h in c["history"]}
        assert not train_items & {x["item_idx"] for x in c["base"] + c["befa"]}  # train items are masked
    assert (folder / ins["gates_png"]).exists() and (folder / ins["cosines_png"]).exists()


def test_report_states_the_result_and_labels_random_encoders(study):
    _, _, result, folder = study
    md = (folder / "report.md").read_text()
    assert result.verdict in md and "paper's claim" in md and "Random-init encoder" in md
    assert "Wilcoxon p" in md and "overhead w/o tables" in md
    frame = pq.read_table(folder / "results.parquet").to_pandas().drop_duplicates("run_dir")
    frame = frame[frame["experiment"] != "floor"]  # MostPop trains nothing, so it cannot hit the cap
    capped = int((frame["epochs_run"] >= 2).sum())
    assert (f"{capped} of {len(frame)} runs stopped at the epoch cap" in md) == (capped > 0)
    cap_line = f"runs stopped by the epoch cap (2) before early stopping: {capped} of {len(frame)} (target: none)"
    assert cap_line in md  # stated whichever way it falls, zero included
    html = (folder / "report.html").read_text()
    assert cap_line in html
    assert "plots/sweep_t.png" in html and "posters/" in html and "http" not in html.replace("http-equiv", "")


def test_a_second_run_reuses_every_finished_run(study, datasets_root):
    cat, settings, first, folder = study
    # a watch-triggered retrain reruns a catalog with its registered parameters: a study on
    # the same catalog must leave them alone
    registered = PipelineParams(
        dataset="ml-small",
        importer="generic",
        models=["lightgcn"],
        epochs=3,
        encoder="minilm",
        ingest_options=cat.ingest_options(),
    )
    register_catalog(settings, registered)
    before = (watch_dir(settings) / REGISTRY).read_bytes()

    again = run_study(tiny_study_params(cat), settings)
    assert again.runs_trained == 0 and again.runs_reused > 0
    assert again.main == first.main
    assert (watch_dir(settings) / REGISTRY).read_bytes() == before
    assert registered_params(settings, "ml-small") == registered.model_copy(update={"run_name": None})
