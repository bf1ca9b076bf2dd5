"""Amazon Baby 5-core, interactions only (``amazon-baby-5core``).

Files (under ``<datasets root>/amazon-baby-5core/``, verified against SHA256SUMS first):
``train.json``, ``val.json``, ``test.json`` (each ``{user index: [item indices]}``) and
``user2id.json`` / ``item2id.json`` (reviewer id / ASIN -> index).

- Items are the ASINs of ``item2id``, in index order, so ``item_idx`` equals the given
  item index. No text, no image (empty text, null hashes): features for this set are
  random stand-ins made elsewhere and labelled as such.
- Users are the reviewer ids of ``user2id``; ``user_idx`` is assigned by the catalog
  (sorted reviewer ids), and the given user index is mapped through the reviewer id.
- Every interaction is implicit (rating 1.0, timestamp 0 = unknown). The given
  train/val/test become the named split ``given`` (labels 0/1/2).
- Errors: an index missing from the id maps, two ids sharing an index, a non-integer
  index, or a (user, item) pair present in two split files (a leak) — each names the file
  and the user key.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from pipeline.data.catalog import CatalogError, IngestReport, build_catalog
from pipeline.data.datasets import verify_dataset
from pipeline.data.importers.base import Importer, ImporterOptions, ImportResult, count_catalog
from pipeline.data.importers.validation import require_file, require_nonempty

NAME = "amazon-baby-5core"
SPLIT_FILES = (("train.json", 0), ("val.json", 1), ("test.json", 2))


class AmazonOptions(ImporterOptions):
    root: Path | None = None
    verify: bool = Field(True, description="check the dataset's files against their pinned SHA256 sums first")


def _load_json(path: Path) -> dict:
    require_file(path, "json file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(path, f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(path, f"expected a JSON object, found {type(data).__name__}")
    return data


def _inverse(mapping: dict, path: Path, what: str) -> np.ndarray:
    """index -> original id, checking the indices are exactly 0..n-1."""
    n = len(mapping)
    out = np.empty(n, dtype=object)
    seen = np.zeros(n, dtype=bool)
    for key, idx in mapping.items():
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < n:
            raise CatalogError(path, f"{what} {key!r} has index {idx!r}; indices must be the integers 0..{n - 1}")
        if seen[idx]:
            raise CatalogError(path, f"index {idx} is given to two {what}s ({out[idx]!r} and {key!r})")
        seen[idx] = True
        out[idx] = str(key)
    return out


class AmazonBabyImporter(Importer):
    name = NAME
    dataset = NAME
    given_split = True  # train/val/test json
    Options = AmazonOptions

    def run(self, options: AmazonOptions) -> ImportResult:
        if options.root is None:
            raise CatalogError(
                None, f"{NAME}: no dataset folder given (set BEFA_DATASETS_ROOT or pass --datasets-root)"
            )
        root = Path(options.root)
        report = IngestReport(dataset=NAME)
        if options.verify:
            report.notes.append(f"{verify_dataset(NAME, root)} files verified against SHA256SUMS")
        report.sources = {f: str(root / f) for f in ("user2id.json", "item2id.json", *(s for s, _ in SPLIT_FILES))}

        users = _inverse(_load_json(root / "user2id.json"), root / "user2id.json", "user")
        asins = _inverse(_load_json(root / "item2id.json"), root / "item2id.json", "item")
        require_nonempty(len(asins), root / "item2id.json", "items")
        report.counts_in.update(users=len(users), items=len(asins))

        given = _given_splits(root, len(users), len(asins), report)
        require_nonempty(len(given), root / "train.json", "interactions")
        report.counts_in["interactions"] = len(given)

        items = pd.DataFrame({"item_id": asins, "title": "", "text": "", "image": None, "image_hash": None})
        inter = pd.DataFrame(
            {
                "user_id": users[given["u"].to_numpy()],
                "item_id": asins[given["i"].to_numpy()],
                "rating": 1.0,
                "timestamp": 0,
            }
        )
        catalog = build_catalog(
            NAME, items, inter, meta={"source": NAME, "content": "none (interactions only)", "given_splits": ["given"]}
        )
        no_inter = len(users) - catalog.num_users
        if no_inter:
            report.add(
                f"{no_inter} users of user2id.json have no interaction",
                "not in the catalog",
                file=root / "user2id.json",
            )
        report.notes.append(
            "no item text or images in this dataset: every item has empty text and no image (by design)"
        )
        count_catalog(report, catalog)
        # interactions keep the order of `given`, so row k of both is the same event
        split = pd.DataFrame(
            {
                "user_idx": catalog.interactions["user_idx"].to_numpy(),
                "item_idx": catalog.interactions["item_idx"].to_numpy(),
                "label": given["label"].to_numpy(),
            }
        )
        return ImportResult(catalog=catalog, report=report, given_splits={"given": split})


def _split_file(path: Path, num_users: int, num_items: int) -> pd.DataFrame:
    """One of train/val/test.json ({user index: [item index, ...]}) as (u, i) rows, checked."""
    u_list, i_list = [], []
    for ukey, items in _load_json(path).items():
        try:
            u = int(ukey)
        except ValueError:
            raise CatalogError(path, f"user key {ukey!r} is not an integer index") from None
        if not 0 <= u < num_users:
            raise CatalogError(path, f"user index {u} is not in user2id.json (0..{num_users - 1})")
        if not isinstance(items, list):
            raise CatalogError(path, f"user {ukey}: expected a list of item indices, found {type(items).__name__}")
        arr = np.asarray(items)
        if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= num_items):
            bad = next(x for x in items if not isinstance(x, int) or not 0 <= x < num_items)
            raise CatalogError(path, f"user {ukey}: item {bad!r} is not an index of item2id.json (0..{num_items - 1})")
        u_list.append(np.full(arr.size, u, dtype=np.int64))
        i_list.append(arr.astype(np.int64))
    return pd.DataFrame(
        {
            "u": np.concatenate(u_list) if u_list else np.empty(0, np.int64),
            "i": np.concatenate(i_list) if i_list else np.empty(0, np.int64),
        }
    )


def _given_splits(root: Path, num_users: int, num_items: int, report: IngestReport) -> pd.DataFrame:
    """The dataset's own train/valid/test as (u, i, label, file) rows; an interaction may be in one only."""
    parts = []
    for fname, label in SPLIT_FILES:
        frame = _split_file(root / fname, num_users, num_items)
        frame["label"] = np.int8(label)
        frame["file"] = fname
        report.counts_in[f"interactions_{fname.split('.')[0]}"] = len(frame)
        parts.append(frame)
    given = pd.concat(parts, ignore_index=True)
    dup = given.duplicated(["u", "i"], keep=False).to_numpy()
    if dup.any():
        first = given[dup].iloc[0]
        files = given[dup & (given["u"] == first["u"]).to_numpy() & (given["i"] == first["i"]).to_numpy()][
            "file"
        ].tolist()
        raise CatalogError(
            root / files[-1],
            f"user {first['u']} / item {first['i']} appears in {files}: "
            f"an interaction may be in one split only ({int(dup.sum())} such rows)",
        )
    return given
