"""A trained run brought back for serving, mapped onto the catalog as it is now.

``load_servable(run_dir, store)`` gives a :class:`Servable`: the model with its best
weights, its final user and item representations, and per item row whether it may be
recommended. The rows are the run's own (``pipeline.training.universe``), so a catalog
that changed since training is handled by id:

- **removed items** (in the run, no longer in the catalog) are kept as rows, because the
  model's graphs were built over them, but are never returned;
- **new items** (in the catalog, not in the run) are appended as rows when the model can
  represent an item it never trained (``Recommender.serves_new_items``). The model is then
  rebuilt over the grown item set: its content graphs (kNN over content features) are
  rebuilt with the new items, every learned tensor keeps its trained rows, a new item's ID
  (behaviour) embedding is zero (it has no behaviour: the BeFA gate then sees a zero
  behaviour embedding) and any other per-item tensor keeps the fresh model's value for it
  (a trainable feature table: the item's own feature row). Models without a content path
  (LightGCN, MostPop) do not serve new items; the manifest says how many were left out.
- **features**: the trained items are read from the run's recorded snapshots, exactly as
  trained; new items from the feature set's current snapshot (the catalog watch extracts
  them). A new item without a stored feature gets the mean row, as in training.

Nothing here trains; the user rows are the run's too (a user who joined after the run has
no representation and is refused by name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from torch import Tensor

from models import get_model_class
from models.base import Recommender
from models.id_dropout import item_ids_masked
from pipeline.data.catalog import Catalog, CatalogError
from pipeline.data.splits import Split
from pipeline.device import resolve_device
from pipeline.evaluation.calibration import QuantileCalibration
from pipeline.evaluation.evaluator import UserItems
from pipeline.features.bundle import FeatureBundle
from pipeline.features.load import load_features
from pipeline.serving.new_items import apply_mapper, fit_missing_mappers
from pipeline.training.api import TrainedRun, load_trained
from pipeline.training.build import build_model
from pipeline.training.checkpoints import upgrade_keys
from pipeline.training.prepare import prepare_data
from pipeline.training.record import BEST, RunRecord
from pipeline.training.universe import Universe, as_catalog, catalog_universe, load_universe
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey

ID_EMBEDDING = "item_embedding"


class ServingError(ValueError):
    """A run or request that cannot be served, said in words (the CLI prints it, exit 2)."""


@dataclass
class Servable:
    run_dir: Path
    record: RunRecord
    catalog: Catalog  # the current catalog
    model: Recommender
    item_ids: np.ndarray  # model row -> item_id (trained rows, then new ones)
    user_rows: pd.Series  # user_id -> model row
    user_emb: Tensor  # (U, d) float32, on the serving device
    item_emb: Tensor  # (I, d) float32
    active: Tensor  # (I,) bool: in the current catalog (and servable)
    new: Tensor  # (I,) bool: added to the catalog after training
    history: UserItems  # per user row: every item row the user interacted with (train split + current catalog)
    train_history: UserItems  # per user row: the train split's items (what the evaluator masks)
    user_ids: np.ndarray  # model user row -> user_id ("" for a row without one)
    features: FeatureBundle = field(default_factory=FeatureBundle.empty)  # rows aligned with item_ids
    universe_source: str = "run"
    new_items_left_out: int = 0
    new_item_snapshots: dict[str, str] = field(default_factory=dict)
    catalog_dir: str | None = None  # the folder the current catalog was read from
    # items the run never trained on (new and cold ones): their representation is the content
    # mapper's when ``mapper`` is set, else the model's own content path (pipeline.serving.new_items)
    no_behaviour: Tensor | None = None
    calibration: QuantileCalibration | None = None  # their scores on the warm items' scale, per user
    mapper: str | None = None  # the mapper method used, None when none was
    calibration_note: str | None = None  # one line when the calibration asked for fell back (new_items)

    @property
    def num_items(self) -> int:
        return int(self.item_ids.size)

    def item_rows(self) -> pd.Series:
        return pd.Series(np.arange(self.num_items, dtype=np.int64), index=self.item_ids)


def _universe(run_dir: Path, record: RunRecord, current: Catalog) -> Universe:
    universe = load_universe(run_dir)
    if universe is not None:
        return universe
    trained = record.data_counts.get("items")
    if trained is not None and trained != current.num_items:
        raise ServingError(
            f"{run_dir}: the run predates items.parquet and the catalog has {current.num_items} items now, "
            f"{trained} when it trained; serve it with --catalog pointing at the catalog it trained on, or retrain"
        )
    return catalog_universe(current)


def _recorded_sets(record: RunRecord) -> dict[str, dict[str, Any]]:
    return {m: s for m, s in record.feature_sets.items() if s.get("fingerprint")}


def _trained_features(record: RunRecord, universe: Universe, store: FeatureStore, name: str) -> FeatureBundle | None:
    sets = _recorded_sets(record)
    if not sets:
        return None
    view = as_catalog(universe, name)
    return load_features(
        view,
        store,
        {m: s["fingerprint"] for m, s in sets.items()},
        snapshots={m: s["snapshot"] for m, s in sets.items()},
    )


def _grown_features(
    record: RunRecord, trained: FeatureBundle, new_items: pd.DataFrame, store: FeatureStore, name: str
) -> tuple[FeatureBundle, dict[str, str]]:
    """Trained rows as recorded, then the new items' rows from each feature set's current snapshot."""
    sets = _recorded_sets(record)
    feats, masks, used = {}, {}, {}
    view = Catalog(
        name=name,
        items=new_items.assign(item_idx=np.arange(len(new_items), dtype=np.int64)),
        interactions=pd.DataFrame(),
    )
    for m, s in sets.items():
        key = FeatureSetKey(name, s["fingerprint"], m)
        current = store.current_snapshot(key)
        if current is None:
            x_new = torch.zeros(len(new_items), trained.features[m].size(1))
            m_new = torch.zeros(len(new_items), dtype=torch.bool)
        else:
            fresh = load_features(view, store, {m: s["fingerprint"]}, fill="zero", snapshots={m: current.id})
            x_new, m_new = fresh.features[m], fresh.masks[m]
            used[m] = current.id
        old_x, old_mask = trained.features[m], trained.masks[m]
        if bool(old_mask.any()):
            x_new[~m_new] = old_x[old_mask].mean(
                dim=0
            )  # the training fill, so a featureless new item sits at the centroid
        feats[m], masks[m] = torch.cat([old_x, x_new]), torch.cat([old_mask, m_new])
    bundle = FeatureBundle(feats, masks, dict(trained.snapshots), dict(trained.fingerprints), dict(trained.random_init))
    return bundle, used


def _load_grown_weights(path: Path, net: Recommender, record_version: int, trained_items: int) -> None:
    """Trained rows into a model built over more items; new rows as the module docstring says."""
    tensors = upgrade_keys(load_file(str(path)), record_version)
    state = net.state_dict()
    unexpected = sorted(set(tensors) - set(state))
    if unexpected:
        raise ServingError(f"{path}: checkpoint has keys the model lacks: {unexpected[:5]}")
    grown: dict[str, Tensor] = {}
    for key, t in tensors.items():
        target = state[key]
        if t.shape == target.shape:
            grown[key] = t
            continue
        if t.dim() == 0 or t.shape[1:] != target.shape[1:] or t.shape[0] != trained_items:
            raise ServingError(f"{path}: {key} has shape {tuple(t.shape)}, the grown model {tuple(target.shape)}")
        rows = target.detach().clone()
        rows[:trained_items] = t.to(rows.dtype)
        if key.split(".")[-1] == ID_EMBEDDING:
            rows[trained_items:] = 0
        grown[key] = rows
    net.load_state_dict(grown, strict=False)


def _pairs_table(users: np.ndarray, items: np.ndarray, num_users: int, device: torch.device) -> UserItems:
    if users.size:
        pairs = np.unique(np.stack([users, items]), axis=1)
        users, items = pairs[0], pairs[1]
    return UserItems.from_pairs(num_users, torch.from_numpy(users).to(device), torch.from_numpy(items).to(device))


def _histories(
    catalog: Catalog, split: Split, user_rows: pd.Series, item_rows: pd.Series, num_users: int, device: torch.device
) -> tuple[UserItems, UserItems]:
    """(train split + current catalog, train split only) as user row -> item rows."""
    train = split.part(0)
    tu, ti = train["user_idx"].to_numpy(np.int64), train["item_idx"].to_numpy(np.int64)
    inter = catalog.interactions
    u = user_rows.reindex(inter["user_id"].astype(str).to_numpy()).to_numpy(dtype=float)
    i = item_rows.reindex(inter["item_id"].astype(str).to_numpy()).to_numpy(dtype=float)
    known = ~(np.isnan(u) | np.isnan(i))
    every = _pairs_table(
        np.concatenate([tu, u[known].astype(np.int64)]),
        np.concatenate([ti, i[known].astype(np.int64)]),
        num_users,
        device,
    )
    return every, _pairs_table(tu, ti, num_users, device)


def _user_ids(user_rows: pd.Series, num_users: int) -> np.ndarray:
    ids = np.full(num_users, "", dtype=object)
    ids[user_rows.to_numpy(np.int64)] = user_rows.index.to_numpy(dtype=object)
    return ids


def load_servable(
    run_dir: str | Path,
    store: FeatureStore,
    catalog: str | Path | Catalog | None = None,
    device: str | torch.device | None = None,
    new_items: bool = True,
    mapper: str = "auto",
    calibration: str | None = None,
) -> Servable:
    """The run at ``run_dir`` mapped onto ``catalog`` (default: the one it recorded); ``mapper`` and
    ``calibration``: how items without behaviour are represented and scored (``pipeline.serving.new_items``)."""
    run_dir = Path(run_dir)
    record = RunRecord.load(run_dir)
    source, current, split = _sources(run_dir, record, catalog)
    universe = _universe(run_dir, record, current)
    device = resolve_device(device)
    model_cls = get_model_class(record.model)
    trained = _trained_features(record, universe, store, record.catalog or current.name)
    in_catalog = set(current.items["item_id"].astype(str))
    fresh_items = current.items[~current.items["item_id"].isin(set(universe.items["item_id"]))]
    grow = new_items and len(fresh_items) > 0 and getattr(model_cls, "serves_new_items", False)
    item_ids = universe.items["item_id"].to_numpy(dtype=object)
    snapshots_new: dict[str, str] = {}
    if mapper not in ("none", "auto"):  # a mapper asked for by name: fit the run's mappers once if missing
        fit_missing_mappers(run_dir, trained, as_catalog(universe, current.name), split, device)
    if grow:
        net, bundle, snapshots_new = _grown_model(
            run_dir, record, model_cls, universe, fresh_items, trained, split, store, current, device
        )
        item_ids = np.concatenate([item_ids, fresh_items["item_id"].to_numpy(dtype=object)])
    else:
        run = load_trained(
            run_dir, catalog=as_catalog(universe, current.name), split=split, features=trained, device=device
        )
        net, bundle = run.model, trained or FeatureBundle.empty()
    user_emb, item_emb = _serving_embeddings(net, universe.num_items)
    active = torch.tensor([i in in_catalog for i in item_ids], dtype=torch.bool, device=item_emb.device)
    new = torch.arange(item_ids.size, device=item_emb.device) >= universe.num_items
    item_rows = pd.Series(np.arange(item_ids.size, dtype=np.int64), index=item_ids)
    user_rows = universe.user_rows()
    every, train_only = _histories(current, split, user_rows, item_rows, user_emb.size(0), item_emb.device)
    scoring = apply_mapper(run_dir, mapper, bundle, user_emb, item_emb, train_only, calibration)
    return Servable(
        **vars(scoring),  # no_behaviour, calibration, mapper, calibration_note
        run_dir=run_dir,
        record=record,
        catalog=current,
        model=net,
        item_ids=item_ids,
        user_rows=user_rows,
        user_emb=user_emb,
        item_emb=item_emb,
        active=active,
        new=new,
        history=every,
        train_history=train_only,
        user_ids=_user_ids(user_rows, user_emb.size(0)),
        features=bundle,
        universe_source=universe.source,
        new_items_left_out=0 if grow else len(fresh_items),
        new_item_snapshots=snapshots_new,
        catalog_dir=None if isinstance(source, Catalog) else str(Path(source).resolve()),
    )


def _sources(run_dir: Path, record: RunRecord, catalog: str | Path | Catalog | None) -> tuple[Any, Catalog, Split]:
    """(the catalog source as given or recorded, the catalog now, the run's split)."""
    source = catalog if catalog is not None else record.sources.get("catalog")
    if source is None:
        raise ServingError(f"{run_dir}: the run did not record its catalog folder; pass --catalog")
    current = source if isinstance(source, Catalog) else Catalog.load(source)
    if not record.sources.get("split"):
        raise ServingError(f"{run_dir}: the run did not record its split file")
    return source, current, Split.load(record.sources["split"])


def load_on_own_items(run_dir: str | Path, store: FeatureStore, device: str | torch.device | None = None) -> TrainedRun:
    """The run rebuilt on the items it trained on (its ``items.parquet``), whatever its catalog
    holds now (``befa map`` of a run whose catalog has grown)."""
    run_dir = Path(run_dir)
    record = RunRecord.load(run_dir)
    _, current, split = _sources(run_dir, record, None)
    universe = _universe(run_dir, record, current)
    trained = _trained_features(record, universe, store, record.catalog or current.name)
    view = as_catalog(universe, current.name)
    return load_trained(run_dir, catalog=view, split=split, features=trained, device=resolve_device(device))


def _serving_embeddings(net: Recommender, trained_items: int) -> tuple[Tensor, Tensor]:
    with torch.no_grad(), item_ids_masked(net, net.id_keep()):
        user_emb, item_emb = net.inference_embeddings()
        return net.serving_embeddings(user_emb.float(), item_emb.float(), trained_items)


def _grown_model(
    run_dir: Path,
    record: RunRecord,
    model_cls: type[Recommender],
    universe: Universe,
    fresh_items: pd.DataFrame,
    trained: FeatureBundle | None,
    split: Split,
    store: FeatureStore,
    current: Catalog,
    device: torch.device,
) -> tuple[Recommender, FeatureBundle, dict[str, str]]:
    if trained is None:
        raise ServingError(f"{run_dir}: {record.model} recorded no features, so it has no content path for new items")
    bundle, used = _grown_features(record, trained, fresh_items, store, record.catalog or current.name)
    num_items = universe.num_items + len(fresh_items)
    prepared = prepare_data(
        split, num_items=num_items, features=bundle, num_users=record.data_counts.get("users"), device=device
    )
    config = model_cls.Config.model_validate(record.config)
    net = build_model(model_cls, prepared.train, config, record.seed)
    _load_grown_weights(run_dir / BEST, net, record.record_version, universe.num_items)
    net.eval()
    return net, bundle, used


def parse_ids(values: list[str] | None, known: pd.Series, what: str, flag: str) -> np.ndarray | None:
    """Rows of the given ids, or None for all; unknown ids are refused by name."""
    if values is None:
        return None
    missing = [v for v in values if v not in known.index]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise ServingError(f"{flag}: {len(missing)} {what} unknown to the run: {shown}")
    return np.unique(known.loc[values].to_numpy(np.int64))


def read_id_file(path: str | Path, flag: str) -> list[str]:
    """Ids from a text file (one per line, '#' comments) or a CSV/Parquet with an ``item_id``/``user_id`` column."""
    path = Path(path)
    if not path.exists():
        raise CatalogError(path, f"{flag}: no such file")
    if path.suffix in (".parquet", ".csv"):
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
        cols = [c for c in ("item_id", "user_id") if c in frame]
        if not cols:
            raise CatalogError(path, f"{flag}: expected an item_id or user_id column, found {list(frame.columns)}")
        return [str(v) for v in frame[cols[0]].dropna()]
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]
