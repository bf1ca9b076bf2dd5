"""The study's result tables as typed rows: what ``pipeline.study.analysis`` computes and
the study report (``pipeline.study.report``) renders.

A row built with a missing or misspelt figure fails where it is built, instead of the
report printing ``?``; ``study.json`` stores them as JSON and reads them back through
these models (older studies' rows have the same keys).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from pipeline.study.stats import PairedTest


class GainRow(BaseModel):
    """One model and metric: mean ± std over seeds of base and +BeFA, and the relative gain of the means."""

    model: str
    metric: str
    base_mean: float
    base_std: float
    befa_mean: float
    befa_std: float
    seeds: int
    relative_gain: float | None  # None when the base mean is 0


class SignificanceRow(PairedTest):
    """One model and metric: the paired tests over test users, Holm-adjusted over the family."""

    model: str
    p_wilcoxon_holm: float | None = None
    significant: bool = False


class FloorRow(BaseModel):
    """MostPop (the first row), or one (model, adapter) arm's seed means against it."""

    model: str
    adapter: str
    valid: float | None
    test: float | None
    seeds: int
    below: bool | None  # None for MostPop itself
    below_seeds: int
    causes: list[str] = Field(default_factory=list)


class OverheadRow(BaseModel):
    """Parameters and seconds per epoch of one model, base vs +BeFA."""

    model: str
    adapter_params: int
    base_params_without_tables: int
    base_params_with_tables: int
    befa_params_without_tables: int
    befa_params_with_tables: int
    adapter_overhead_without_tables: float | None
    adapter_overhead_with_tables: float | None
    net_overhead_without_tables: float | None
    net_overhead_with_tables: float | None
    epoch_s_base: float | None
    epoch_s_befa: float | None
    epoch_time_ratio: float | None
    epochs_base: list[int]
    epochs_befa: list[int]


class UserGroupRow(BaseModel):
    """Base vs +BeFA for one group of users by train activity."""

    model: str
    metric: str
    group: int
    train_interactions: str  # "lo-hi"
    users: int
    base: float
    befa: float
    relative_gain: float | None


class SearchRow(BaseModel):
    """One model and adapter's search on VALID: its size, winner and time."""

    model: str
    adapter: str
    trials: int
    grid_size: int
    winner: dict[str, Any]  # the winning configuration's overrides (config keys -> values)
    winner_valid_r20: float | None
    seconds: float
    # the winner's value of every searched key, defaults included; pruned trials (both empty / 0 in older studies)
    winner_params: dict[str, Any] = Field(default_factory=dict)
    pruned: int = 0


class SelectionBiasRow(BaseModel):
    """One model and metric, from the search trials (first seed, complete trials): the test metric of
    each arm's winner picked on VALID (the study's rule) and picked on TEST (the paper's code), and
    the +BeFA gain each pick reports (``pipeline.study.selection_bias``)."""

    model: str
    metric: str
    trials_base: int
    trials_befa: int
    valid_picked_base: float | None
    valid_picked_befa: float | None
    valid_picked_gain: float | None
    test_picked_base: float | None
    test_picked_befa: float | None
    test_picked_gain: float | None


class ColdItems(BaseModel):
    """The item cold-start phase: its split, base vs +BeFA and the paired tests."""

    cold_fraction: float | None
    split_id: str | None
    gains: list[GainRow] = Field(default_factory=list)
    significance: list[SignificanceRow] = Field(default_factory=list)


class AuthorsArmRow(BaseModel):
    """One model of the authors' arm (``pipeline.study.authors_arm``) and metric: test at the best
    valid epoch, mean ± std over the study's seeds."""

    arm: str  # "lattice", "authors_befa" or "authors_purifier"
    label: str  # "(a) LATTICE", ...
    model: str
    adapter: str
    metric: str
    mean: float
    std: float
    seeds: int


class AuthorsComparisonRow(BaseModel):
    """One comparison of the authors' arm and metric: paired per-user tests of ``arm`` against
    ``reference`` (in ``test``, "befa" is the arm and "base" the reference), Holm-adjusted over
    the three comparisons and both metrics."""

    comparison: str  # "(b) vs (c)"
    arm: str
    reference: str
    isolates: str  # what the comparison measures
    metric: str
    relative_gain: float | None  # of the arm's seed mean over the reference's; None when that is 0
    test: PairedTest
    p_wilcoxon_holm: float | None = None
    significant: bool = False


class AuthorsArm(BaseModel):
    """LATTICE as the authors ran it: each arm's configuration and where it came from, its
    results, and the three paired comparisons."""

    configurations: dict[str, dict[str, Any]]  # arm -> the config overrides its runs trained with
    sources: dict[str, str]  # arm -> where that configuration came from
    arms: list[AuthorsArmRow] = Field(default_factory=list)
    comparisons: list[AuthorsComparisonRow] = Field(default_factory=list)


class InsertionArmRow(BaseModel):
    """One model, BeFA insertion and metric of the insertion ablation (``pipeline.study.insertions``):
    test at the best valid epoch, mean ± std over the study's seeds, against the model's base runs
    of the main table (in ``test``, "base" is base and "befa" the insertion), Holm-adjusted over the
    phase's family (models x insertions x metrics)."""

    model: str
    insertion: str  # "forward", "loss" or "content"
    metric: str
    mean: float
    std: float
    seeds: int
    base_mean: float
    base_std: float
    relative_gain: float | None  # of the seed means over base's; None when base's is 0
    reused: bool = False  # the main table's +BeFA runs (the winner's own insertion), not trained again
    test: PairedTest | None = None  # None without base runs to pair with
    p_wilcoxon_holm: float | None = None
    significant: bool = False
    adapter_off: bool = False  # every modality's gate collapsed in every seed: the gain is not BeFA's effect
    collapsed: list[str] = Field(default_factory=list)  # modalities whose gate collapsed in every seed
    inert: str | None = None  # why the adapter reached neither loss nor scores in every seed (RunRecord.befa_inert)


class InsertionGateRow(BaseModel):
    """Gate health of one model, insertion and modality at each run's best valid epoch
    (``RunRecord.best_gates``; ``pipeline.training.gate_health``): means over the seeds."""

    model: str
    insertion: str
    modality: str
    mean: float  # the gate's mean
    std_items: float  # its spread over items
    share_high: float  # share of values > 0.99
    share_low: float  # share of values < 0.01
    collapsed_seeds: int
    seeds: int  # seeds with gate health recorded


class GateDistribution(BaseModel):
    """The trained gate g_m(c_m) of one run (an arm's first seed) over every item and dimension, at
    its best valid epoch, recomputed from its weights: a histogram over [0, 1] and a few quantiles."""

    model: str
    insertion: str
    modality: str
    seed: int
    run_dir: str
    counts: list[int]  # values per bin, equal bins over [0, 1]
    values: int  # items x dimensions
    mean: float
    q05: float
    q50: float
    q95: float


class InsertionAblation(BaseModel):
    """Where BeFA acts: each model's +BeFA winner under each insertion, its gate health and the
    distribution of its trained gate."""

    insertions: list[str]  # as asked (StudyParams.insertions), in order
    configurations: dict[str, dict[str, Any]]  # "model/insertion" -> the config overrides its runs trained with
    skipped: dict[str, str] = Field(default_factory=dict)  # "model/insertion" -> why it did not run
    arms: list[InsertionArmRow] = Field(default_factory=list)
    gates: list[InsertionGateRow] = Field(default_factory=list)
    distributions: list[GateDistribution] = Field(default_factory=list)
