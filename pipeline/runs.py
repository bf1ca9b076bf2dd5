"""A training run on disk: its folder, its record, its checkpoints.

Folder layout (every file written atomically, ``storage.atomic``)::

    <run_dir>/
      run.json            RunRecord: config, per-epoch valid metrics, test at the best
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
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import Tensor

from storage.atomic import atomic_path, write_json, write_parquet

REPO_ROOT = Path(__file__).resolve().parents[1]
RECORD = "run.json"
BEST = "best.safetensors"
LAST = "last.pt"
PER_USER = "per_user.parquet"


class EpochLog(BaseModel):
    epoch: int
    loss: float | None
    lr: float | None
    train_s: float
    eval_s: float
    valid: dict[str, float]


class RunRecord(BaseModel):
    """Everything needed to say what a run was and how it went."""

    model_config = ConfigDict(extra="allow")
    record_version: int = 1
    model: str
    config: dict[str, Any]
    trainer: dict[str, Any] = Field(default_factory=dict)  # seed, device, max_epochs, patience, ...
    seed: int
    device: str
    catalog: str | None = None
    split_id: str
    feature_snapshots: dict[str, str] = Field(default_factory=dict)
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
    selection_metric: str = "recall@20"
    wall: dict[str, float] = Field(default_factory=dict)
    memory: dict[str, float] = Field(default_factory=dict)
    parameters: dict[str, float] = Field(default_factory=dict)
    graph_build_s: float | None = None
    resumed_at: list[str] = Field(default_factory=list)
    error: str | None = None
    sources: dict[str, str | None] = Field(default_factory=dict)  # catalog / split paths, for evaluate_run

    def save(self, run_dir: str | Path) -> Path:
        return write_json(Path(run_dir) / RECORD, self.model_dump(mode="json"))

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunRecord":
        path = Path(run_dir) / RECORD
        if not path.exists():
            raise FileNotFoundError(f"{path}: no run record (is this a run folder?)")
        return cls.model_validate(json.loads(path.read_text()))


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


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak RSS of this process (ru_maxrss: KiB on Linux, bytes on macOS) and CUDA peak."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    out = {"peak_rss_mb": rss_bytes / 2**20}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# -- checkpoints -------------------------------------------------------------
def _skip(name: str, t: Tensor, inputs: Iterable[Tensor]) -> bool:
    if t.layout != torch.strided:
        return True  # sparse graphs: rebuilt from the split and features
    ptr = t.data_ptr()
    return any(ptr == x.data_ptr() and t.shape == x.shape for x in inputs)


def learned_state(model: torch.nn.Module, inputs: Iterable[Tensor] = ()) -> tuple[dict[str, Tensor], list[str]]:
    """The model's state dict minus derived tensors; returns (state, skipped names)."""
    inputs = [x for x in inputs if x.layout == torch.strided]
    params = {name for name, _ in model.named_parameters()}
    state, skipped = {}, []
    for name, t in model.state_dict().items():
        if name not in params and _skip(name, t, inputs):
            skipped.append(name)
        else:
            state[name] = t
    return state, skipped


def save_weights(path: str | Path, model: torch.nn.Module, inputs: Iterable[Tensor] = (), meta: dict[str, str] | None = None) -> Path:
    state, skipped = learned_state(model, inputs)
    # clone: safetensors refuses tensors that share storage (tied weights, views)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    metadata = {"skipped": json.dumps(skipped), **(meta or {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Load weights saved by ``save_weights``; every model key must be present or derived."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint")
    tensors = load_file(str(path))
    _load_checked(model, tensors, path)


def _load_checked(model: torch.nn.Module, tensors: dict[str, Tensor], where: Path) -> None:
    device_state = model.state_dict()
    unexpected = sorted(set(tensors) - set(device_state))
    if unexpected:
        raise ValueError(f"{where}: checkpoint has keys the model lacks: {unexpected[:5]}")
    missing = [k for k, t in device_state.items() if k not in tensors and t.layout == torch.strided and not _is_derived(model, k)]
    if missing:
        raise ValueError(f"{where}: checkpoint lacks learned tensors {missing[:5]}")
    model.load_state_dict(tensors, strict=False)


def _is_derived(model: torch.nn.Module, key: str) -> bool:
    """A key absent from a checkpoint is fine only if it is not a learned parameter."""
    return key not in dict(model.named_parameters())


def save_last(path: str | Path, model: torch.nn.Module, inputs: Iterable[Tensor], state: dict[str, Any]) -> Path:
    weights, _ = learned_state(model, inputs)
    blob = {"model": {k: v.detach().cpu() for k, v in weights.items()}, **state}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return Path(path)


def load_last(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    path = Path(path)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    _load_checked(model, blob.pop("model"), path)
    return blob


def save_per_user(path: str | Path, per_part: dict[str, Any]) -> Path:
    """per_part: part -> EvalResult (users + per_user arrays)."""
    frames = []
    for part, res in per_part.items():
        cols = {"part": pa.array([part] * res.num_users), "user_idx": pa.array(res.users)}
        cols.update({name: pa.array(v) for name, v in res.per_user.items()})
        frames.append(pa.table(cols))
    table = pa.concat_tables(frames) if frames else pa.table({})
    return write_parquet(path, table)
