"""Checkpoints of a training run: best weights (safetensors), the resumable last state, per-user metrics.

Checkpoints leave out tensors that are derived from the inputs rather than learned:
sparse graphs (rebuilt by the model's constructor) and the frozen input feature tensors
themselves (identified by their feature snapshot ids in the run record).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from pipeline.training.record import RECORD_VERSION
from storage.atomic import atomic_path, write_parquet


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


def save_weights(
    path: str | Path, model: torch.nn.Module, inputs: Iterable[Tensor] = (), meta: dict[str, str] | None = None
) -> Path:
    state, skipped = learned_state(model, inputs)
    # clone: safetensors refuses tensors that share storage (tied weights, views)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    metadata = {"skipped": json.dumps(skipped), **(meta or {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


# Checkpoint keys renamed since a run-record version: version -> [(old prefix, new prefix)].
# A checkpoint of record version v gets the renames of every version >= v applied on load.
KEY_RENAMES: dict[int, list[tuple[str, str]]] = {
    # one ID-embedding name across models (LightGCN, BM3, FREEDOM had user_emb / item_emb)
    1: [("user_emb", "user_embedding"), ("item_emb", "item_embedding")],
}


def upgrade_keys(tensors: dict[str, Tensor], record_version: int) -> dict[str, Tensor]:
    """``tensors`` with the keys of an older layout renamed to the current ones."""
    renames = [r for v in sorted(KEY_RENAMES) if v >= record_version for r in KEY_RENAMES[v]]
    out = {}
    for key, value in tensors.items():
        for old, new in renames:
            if key == old or key.startswith(old + "."):
                key = new + key[len(old) :]
        out[key] = value
    return out


def load_weights(path: str | Path, model: torch.nn.Module, record_version: int = RECORD_VERSION) -> None:
    """Load weights saved by ``save_weights`` (by a run of ``record_version``); every model
    key must be present or derived."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint")
    tensors = upgrade_keys(load_file(str(path)), record_version)
    _load_checked(model, tensors, path)


def _load_checked(model: torch.nn.Module, tensors: dict[str, Tensor], where: Path) -> None:
    device_state = model.state_dict()
    unexpected = sorted(set(tensors) - set(device_state))
    if unexpected:
        raise ValueError(f"{where}: checkpoint has keys the model lacks: {unexpected[:5]}")
    missing = [
        k
        for k, t in device_state.items()
        if k not in tensors and t.layout == torch.strided and not _is_derived(model, k)
    ]
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
    """Load the resumable state saved by ``save_last`` into ``model``; returns the rest
    (optimiser, scheduler, RNG states, counters, the record so far). Keys of an older
    layout are renamed by the record version saved with it."""
    path = Path(path)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    version = json.loads(blob.get("record") or "{}").get("record_version", 1)
    _load_checked(model, upgrade_keys(blob.pop("model"), version), path)
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


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    """torch's CPU (and CUDA) generator state and the sampler's, for an exact resume."""
    state = {"torch_cpu": torch.get_rng_state(), "sampler": generator.get_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Tensor], generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"])
    generator.set_state(state["sampler"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)
