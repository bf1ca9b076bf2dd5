"""A training run on disk: its folder, its record, its checkpoints.

Folder layout (every file written atomically, ``storage.atomic``)::

    <run_dir>/
      run.json            RunRecord: config, per-epoch valid metrics (+BeFA: and gate
                          health, pipeline.training.gate_health), test at the best
                          valid epoch, split and feature snapshot ids, seed, code version,
                          wall times, peak memory, parameter report
      best.safetensors    model weights at the best valid epoch
      last.pt             resumable state after the latest epoch (model, optimiser,
                          scheduler, epoch, best so far, early-stopping counter, RNG states)
      per_user.parquet    per-user recall@20 / ndcg@20 on valid and test at the best epoch
                          (columns: part, user_idx, recall@20, ndcg@20) for paired tests

Checkpoints leave out tensors that are derived from the inputs rather than learned:
sparse graphs (rebuilt by the model's constructor) and the frozen input feature tensors
themselves (identified by their feature snapshot ids in the record).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.training.batching import BatchPlan
from pipeline.training.fit_record import FitRecord
from pipeline.training.floor_check import FloorCheck
from pipeline.training.gate_health import GateStats
from pipeline.training.liveness import ProcessInfo, run_state
from storage.atomic import write_json

REPO_ROOT = Path(__file__).resolve().parents[2]
RECORD = "run.json"
BEST = "best.safetensors"
LAST = "last.pt"
PER_USER = "per_user.parquet"
LEGACY_FEATURES = "features.json"  # written by `befa train` before record version 2
RECORD_VERSION = 3
# the BeFA placement every model but MGCN ran before record version 3 (models.base.BeFAConfig.insertion)
LEGACY_INSERTION = "loss"
FINISHED = ("early_stopped", "max_epochs", "evaluated_only")  # statuses of a run that ended normally


class EpochLog(BaseModel):
    epoch: int
    loss: float | None
    lr: float | None
    train_s: float
    eval_s: float
    valid: dict[str, float]
    # +BeFA runs: modality -> the gate over every item after this epoch (pipeline.training.gate_health);
    # None for adapter 'none' and in records written before gate health existed
    gates: dict[str, GateStats] | None = None


class ItemGroupMetrics(BaseModel):
    """Metrics of one item group (warm, cold, long tail) on one part at the best valid epoch
    (definition: ``pipeline.evaluation.groups``)."""

    users: int  # users with >= 1 held-out item in the group
    heldout: int  # held-out (user, item) pairs in the group
    metrics: dict[str, float] = Field(default_factory=dict)  # recall@20, ndcg@20
    # share of the group's items in the top 20 of every ranked user (hybrid setting); None in older records
    top_share: float | None = None


def _finite(x: float) -> float | None:
    return x if x == x else None  # NaN is not valid JSON


def _group(users: int, heldout: int, metrics: dict[str, float], top_share: float = float("nan")) -> ItemGroupMetrics:
    # a group without users has no metric (NaN is not valid JSON): metrics stay empty
    return ItemGroupMetrics(
        users=users, heldout=heldout, metrics=dict(metrics) if users else {}, top_share=_finite(top_share)
    )


def item_group_metrics(results: dict[str, Any]) -> dict[str, dict[str, ItemGroupMetrics]]:
    """part -> group -> ItemGroupMetrics from the evaluator's results (EvalResult.groups)."""
    return {
        part: {g: _group(r.users, r.heldout, r.metrics, r.top_share) for g, r in res.groups.items()}
        for part, res in results.items()
        if getattr(res, "groups", None)
    }


def setting_metrics(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, ItemGroupMetrics]]:
    """setting (cold, warm) -> part -> metrics, from ``pipeline.evaluation.settings.evaluate_settings``."""
    return {
        setting: {part: _group(r.num_users, r.heldout, r.metrics) for part, r in per_part.items()}
        for setting, per_part in settings.items()
    }


class RunRecord(BaseModel):
    """Everything needed to say what a run was and how it went."""

    model_config = ConfigDict(extra="allow")
    # 1: before the sub-package layout; 2: adds feature_sets (features.json folded in);
    # 3: the model config names BeFA's insertion (older +BeFA configs get the placement they ran).
    # Checkpoint key renames between versions are mapped in pipeline.training.checkpoints.
    record_version: int = RECORD_VERSION
    model: str
    config: dict[str, Any]
    trainer: dict[str, Any] = Field(default_factory=dict)  # seed, device, max_epochs, patience, ...
    seed: int
    device: str
    catalog: str | None = None
    split_id: str
    feature_snapshots: dict[str, str] = Field(default_factory=dict)
    # modality -> {snapshot, fingerprint, random_init}: enough to reload the exact features
    feature_sets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    data_counts: dict[str, int] = Field(default_factory=dict)
    data_notes: list[str] = Field(default_factory=list)
    code_version: dict[str, Any] = Field(default_factory=dict)
    started_at: str = ""
    finished_at: str | None = None
    status: str = "running"  # running | finished | early_stopped | max_epochs | evaluated_only | failed
    epochs: list[EpochLog] = Field(default_factory=list)
    best_epoch: int | None = None
    best_valid: dict[str, float] = Field(default_factory=dict)
    test: dict[str, float] = Field(default_factory=dict)  # test metrics at the best valid epoch
    # part (valid, test) -> item group (warm, cold, long_tail) -> metrics at the best valid
    # epoch; absent (empty) in records written before item groups existed
    item_groups: dict[str, dict[str, ItemGroupMetrics]] = Field(default_factory=dict)
    # cold-items splits: setting (cold, warm: candidates restricted, pipeline.evaluation.settings)
    # -> part -> metrics at the best valid epoch; empty for other splits and older records
    settings: dict[str, dict[str, ItemGroupMetrics]] = Field(default_factory=dict)
    selection_metric: str = "recall@20"
    wall: dict[str, float] = Field(default_factory=dict)
    memory: dict[str, float] = Field(default_factory=dict)
    parameters: dict[str, float] = Field(default_factory=dict)
    graph_build_s: float | None = None
    resumed_at: list[str] = Field(default_factory=list)
    error: str | None = None
    sources: dict[str, str | None] = Field(default_factory=dict)  # catalog / split paths, for evaluate_run
    # the small-catalog batch rule as applied (pipeline.training.batching); None in older records
    batching: BatchPlan | None = None
    # MostPop on the same split and whether this run ended below it; None for MostPop and older records
    floor: FloorCheck | None = None
    # befa run's fit: the search on valid this run won (pipeline.training.fit_record); None when not fitted
    fit: FitRecord | None = None
    # why this +BeFA run's adapter could reach neither its loss nor its scores (models.base.Recommender.befa_inert)
    befa_inert: str | None = None
    # who trains it: tells a killed run ("running" forever) from a live one (pipeline.training.liveness)
    process: ProcessInfo | None = None
    # where this record was read from (set by ``load``; never written into run.json)
    run_dir: str | None = Field(None, exclude=True)

    @property
    def adapter(self) -> str:
        return str(self.config.get("adapter", "none"))

    @property
    def state(self) -> str:
        """``status``, except that a ``running`` run whose process is gone reads ``interrupted``."""
        return run_state(self.status, self.process, self.run_dir)

    @property
    def below_floor(self) -> bool:
        return bool(self.floor and self.floor.below)

    @property
    def best_gates(self) -> dict[str, GateStats]:
        """modality -> the gate's stats at the best valid epoch; empty when none were recorded."""
        best = next((e for e in self.epochs if e.epoch == self.best_epoch), None)
        return dict(best.gates or {}) if best is not None else {}

    @property
    def gate_collapsed(self) -> dict[str, bool]:
        """modality -> whether BeFA's gate had collapsed at the best valid epoch (the adapter was off)."""
        return {m: s.collapsed for m, s in self.best_gates.items()}

    def save(self, run_dir: str | Path) -> Path:
        return write_json(Path(run_dir) / RECORD, self.model_dump(mode="json"))

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunRecord":
        path = Path(run_dir) / RECORD
        if not path.exists():
            raise FileNotFoundError(f"{path}: no run record (is this a run folder?)")
        record = cls.model_validate(upgrade_config(json.loads(path.read_text())))
        record.run_dir = str(Path(run_dir))
        return record


def read_per_user(run_dir: str | Path) -> Any:
    """The run's per-user metrics (``per_user.parquet``: part, user_idx, recall@20, ndcg@20)
    as a pandas DataFrame; FileNotFoundError naming the file when the run wrote none."""
    import pyarrow.parquet as pq

    path = Path(run_dir) / PER_USER
    if not path.exists():
        raise FileNotFoundError(f"{path}: no per-user metrics (the run did not finish, or predates them)")
    return pq.read_table(path).to_pandas()


def upgrade_config(data: dict[str, Any]) -> dict[str, Any]:
    """A record of an older version, its model config in today's terms: before version 3 there
    was no ``befa.insertion``, and a +BeFA model ran the placement now named
    :data:`LEGACY_INSERTION` (MGCN's, its purifier, is the one now named "forward")."""
    config = data.get("config")
    if int(data.get("record_version", 1)) < 3 and isinstance(config, dict):
        befa = dict(config.get("befa") or {})
        befa.setdefault("insertion", "forward" if data.get("model") == "mgcn" else LEGACY_INSERTION)
        data = {**data, "config": {**config, "befa": befa}}
    return data


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """Git commit + dirty flag of the befa checkout, else the installed package version."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"kind": "git", "commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return {"kind": "package", "version": version("befa")}
    except Exception:  # noqa: BLE001 - not installed: say so rather than fail a run
        return {"kind": "unknown"}
