"""What BeFA changes, looked at directly: gates, cosines, and top-10 lists with posters.

Given a base run and a +BeFA run of the same model (same split, same features), rebuilt
from their folders (``best.safetensors``):

**Gate heatmaps.** For a sample of items (half the most popular in train, half seeded
random), the gate g_m = BeFA_m.gate(c_m) in (0, 1)^d of each modality, items x
dimensions, in eval mode (no dropout). A gate near 1 keeps that dimension of the item's
behaviour embedding E_i, near 0 drops it.

**Cosine histograms: what "before" and "after" mean.** The adapter output lives in
behaviour space (it is E_i gated), while what it replaces is the projected content
c_m = P_m X_m. For every model BeFA is inserted by *substitution* (spec section 4):
where the base model consumes c_m, the +BeFA model consumes adapted_m = E_i * g_m(c_m)
(BM3 and FREEDOM: the content loss terms; LATTICE: the learned item graph and the item
view; MGCN: the purifier output, which in the base model is E_i * sigmoid(W_m c_m + b_m),
itself a gated E_i). So, per item and modality, in the trained +BeFA model:

- ``content_vs_adapted`` = cos(c_m, adapted_m): "before" is the content feature as the
  model computes it at the insertion point, "after" is what the model consumes there
  instead. Low values mean the adapter replaced the content direction by a
  behaviour-driven one (the paper's point: the content is used to *select*, not passed on);
- ``behaviour_vs_adapted`` = cos(E_i, adapted_m): how much the gate reshapes the item's
  behaviour embedding (a gate constant across dimensions gives 1).

Both come from the same trained +BeFA model; comparing c_m of the base run with adapted_m
of the +BeFA run would compare two independently trained spaces, which has no meaning.

**Top-10 lists.** For a few test users: the base model's and the +BeFA model's top 10
(train items masked, as in evaluation), hits on the user's test items marked, with the
posters and titles of the items, and the user's most recent train items (their
"history") on top. Users: the one +BeFA helps most (hits@10 gain), the one it hurts most,
then seeded random test users, so the sample is not cherry-picked in one direction.
Posters are copied as small JPEG thumbnails into ``<out>/posters/`` so the report opens
from the folder with no server.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from models.id_dropout import item_ids_masked
from pipeline.data.image_modes import to_rgb
from pipeline.data.importers.images import read_image_bytes
from pipeline.evaluation.evaluator import topk_items
from pipeline.reporting.common import pyplot, save_figure
from pipeline.training.api import load_trained

THUMB_SIZE = (120, 180)


@torch.no_grad()
def content_and_behaviour(model: Any, modality: str) -> tuple[Tensor, Tensor]:
    """(c_m = P_m X_m, E_i), both I x d, as the model computes them at BeFA's insertion point
    (the model's ``Recommender.befa_inputs``)."""
    content, behaviour = model.befa_inputs([modality])[modality]
    return content.float(), behaviour.float()


@torch.no_grad()
def gates_and_cosines(model: Any, items: Tensor) -> dict[str, dict[str, np.ndarray]]:
    """Per modality: gate of the sample items (n x d), cos(c, a) and cos(E, a) for every item."""
    import torch.nn.functional as F

    out = {}
    for modality, adapter in model.adapters.items():
        c, e = content_and_behaviour(model, modality)
        g = adapter.gate(c)
        a = e * g
        out[modality] = {
            "gates": g[items].cpu().numpy(),
            "content_vs_adapted": F.cosine_similarity(c, a, dim=1).cpu().numpy(),
            "behaviour_vs_adapted": F.cosine_similarity(e, a, dim=1).cpu().numpy(),
            "gate_mean": float(g.mean()),
            "gate_std": float(g.std()),
        }
    return out


@torch.no_grad()
def top_k(model: Any, prepared: Any, users: Tensor, k: int = 10) -> np.ndarray:
    """Each user's top-k items with train items masked (as the evaluator ranks them)."""
    with item_ids_masked(model, model.id_keep()):
        u, i = model.inference_embeddings()
    scores = u[users].float() @ i.float().T
    train = prepared.evaluator.train
    rows, items = train.rows(users.to(train.indptr.device))
    scores[rows.to(scores.device), items.to(scores.device)] = float("-inf")
    return topk_items(scores, k).cpu().numpy()


# -- posters ---------------------------------------------------------------------------
def thumbnail(image_ref: str | None, dest: Path) -> bool:
    """Write a small JPEG of the item's image to ``dest``; False if there is none or it fails."""
    if not image_ref:
        return False
    if dest.exists():
        return True
    from PIL import Image

    try:
        data = read_image_bytes(image_ref)
        with Image.open(io.BytesIO(data)) as img:
            img = to_rgb(img)
            img.thumbnail(THUMB_SIZE)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            img.save(tmp, format="JPEG", quality=85)
            tmp.replace(dest)
        return True
    except Exception:  # noqa: BLE001 - a missing poster is shown as a title card, not an error
        return False


def _item_card(items: pd.DataFrame, idx: int, out_dir: Path, hit: bool | None = None) -> dict[str, Any]:
    row = items.iloc[idx]
    rel = f"posters/{idx}.jpg"
    ok = thumbnail(row.get("image"), out_dir / rel)
    return {
        "item_idx": int(idx),
        "item_id": str(row["item_id"]),
        "title": str(row.get("title") or row["item_id"]),
        "poster": rel if ok else None,
        "hit": hit,
    }


# -- the whole inspection -----------------------------------------------------------------
def pick_items(prepared: Any, n: int, seed: int) -> list[int]:
    """Half the most popular train items, half seeded random others (sorted by popularity)."""
    counts = torch.bincount(prepared.train.train_items.cpu(), minlength=prepared.train.num_items).numpy()
    order = np.argsort(-counts, kind="stable")
    n = min(n, len(order))
    popular = [int(i) for i in order[: (n + 1) // 2]]
    rest = [int(i) for i in order[(n + 1) // 2 :]]
    rng = random.Random(seed)
    chosen = popular + rng.sample(rest, min(n - len(popular), len(rest)))
    return sorted(chosen, key=lambda i: (-counts[i], i))


def pick_users(
    base_top: np.ndarray, befa_top: np.ndarray, users: np.ndarray, test: dict[int, set[int]], n: int, seed: int
) -> list[tuple[int, str]]:
    """(user, why chosen): most helped, most hurt, then seeded random."""
    hits_b = np.array([len(set(base_top[j]) & test[int(u)]) for j, u in enumerate(users)])
    hits_a = np.array([len(set(befa_top[j]) & test[int(u)]) for j, u in enumerate(users)])
    diff = hits_a - hits_b
    chosen: list[tuple[int, str]] = []
    if n >= 1 and diff.size and diff.max() > 0:
        chosen.append(
            (int(np.argmax(diff)), f"+BeFA gains most (hits@10 {hits_b[np.argmax(diff)]} -> {hits_a[np.argmax(diff)]})")
        )
    if n >= 2 and diff.size and diff.min() < 0:
        j = int(np.argmin(diff))
        chosen.append((j, f"+BeFA loses most (hits@10 {hits_b[j]} -> {hits_a[j]})"))
    rng = random.Random(seed)
    others = [j for j in range(len(users)) if j not in {c for c, _ in chosen}]
    rng.shuffle(others)
    for j in others[: max(0, n - len(chosen))]:
        chosen.append((j, f"random test user (hits@10 {hits_b[j]} -> {hits_a[j]})"))
    return chosen[:n]


def inspect_adapter(
    base_run: str,
    befa_run: str,
    catalog: Any,
    split_path: str,
    features: Any,
    out_dir: str | Path,
    n_items: int = 24,
    n_users: int = 4,
    history: int = 12,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Gate heatmap and cosine histogram PNGs plus the top-10 comparison data; returns a
    JSON-friendly dict (paths relative to ``out_dir``) that the report renders."""
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    befa_trained = load_trained(befa_run, catalog, split_path, features, device)
    befa, prepared = befa_trained.model, befa_trained.prepared
    base = load_trained(base_run, catalog, split_path, features, device).model
    model_name = type(befa).name
    items = pick_items(prepared, n_items, seed)
    dev = prepared.train.device
    stats = gates_and_cosines(befa, torch.tensor(items, device=dev))
    heatmap = plot_gates(stats, items, catalog.items, out_dir / "plots" / "gates.png", model_name)
    hist = plot_cosines(stats, out_dir / "plots" / "cosines.png", model_name)

    comparisons = compare_top10(base, befa, prepared, catalog, split_path, out_dir, n_users, history, seed)
    summary = {
        m: {
            "gate_mean": s["gate_mean"],
            "gate_std": s["gate_std"],
            "cos_content_adapted_mean": float(np.mean(s["content_vs_adapted"])),
            "cos_behaviour_adapted_mean": float(np.mean(s["behaviour_vs_adapted"])),
        }
        for m, s in stats.items()
    }
    result = {
        "model": model_name,
        "base_run": str(base_run),
        "befa_run": str(befa_run),
        "items": items,
        "gates_png": str(heatmap.relative_to(out_dir)),
        "cosines_png": str(hist.relative_to(out_dir)),
        "summary": summary,
        "comparisons": comparisons,
    }
    (out_dir / "inspection.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def compare_top10(
    base: Any,
    befa: Any,
    prepared: Any,
    catalog: Any,
    split_path: str,
    out_dir: Path,
    n_users: int,
    history: int,
    seed: int,
) -> list[dict[str, Any]]:
    """For a few test users: recent history, test items, and the top-10 of base and +BeFA."""
    test = prepared.evaluator.heldout["test"]
    users = test.users_with_items()
    if n_users <= 0 or not users.numel():
        return []
    base_top, befa_top = top_k(base, prepared, users), top_k(befa, prepared, users)
    t_rows, t_items = test.rows(users.to(test.indptr.device))
    truth: dict[int, set[int]] = {int(u): set() for u in users.tolist()}
    for r, i in zip(t_rows.tolist(), t_items.tolist()):
        truth[int(users[r])].add(int(i))
    inter = catalog.interactions
    split = pd.read_parquet(split_path)
    train = split[split["label"] == 0]
    ts = inter.drop_duplicates(["user_idx", "item_idx"], keep="last").set_index(["user_idx", "item_idx"])["timestamp"]
    users_np = users.cpu().numpy()
    out = []
    for j, why in pick_users(base_top, befa_top, users_np, truth, n_users, seed):
        u = int(users_np[j])
        hist_items = train[train["user_idx"] == u]["item_idx"].to_numpy()
        when = np.array([ts.get((u, int(i)), 0) for i in hist_items])
        recent = hist_items[np.argsort(-when, kind="stable")][:history]
        out.append(
            {
                "user_idx": u,
                "user_id": str(inter.loc[inter["user_idx"] == u, "user_id"].iloc[0])
                if (inter["user_idx"] == u).any()
                else str(u),
                "why": why,
                "n_train": int(len(hist_items)),
                "test_items": [_item_card(catalog.items, i, out_dir, True) for i in sorted(truth[u])][:history],
                "history": [_item_card(catalog.items, int(i), out_dir) for i in recent],
                "base": [_item_card(catalog.items, int(i), out_dir, int(i) in truth[u]) for i in base_top[j]],
                "befa": [_item_card(catalog.items, int(i), out_dir, int(i) in truth[u]) for i in befa_top[j]],
            }
        )
    return out


# -- plots -----------------------------------------------------------------------------------
def gate_labels(item_table: pd.DataFrame, items: list[int], width: int = 28) -> list[str]:
    """Heatmap row labels: the item's title (its id when untitled), with the id added to every
    title that repeats among the rows (products often share a name, and two identical labels
    would hide which row is which)."""
    names = [str(item_table.iloc[i].get("title") or item_table.iloc[i]["item_id"])[:width] for i in items]
    ids = [str(item_table.iloc[i]["item_id"]) for i in items]
    return [f"{n} [{ident}]" if names.count(n) > 1 and n != ident else n for n, ident in zip(names, ids)]


def plot_gates(
    stats: dict[str, dict[str, Any]], items: list[int], item_table: pd.DataFrame, path: Path, model: str
) -> Path:
    plt = pyplot()
    mods = list(stats)
    fig, axes = plt.subplots(1, len(mods), figsize=(6.5 * len(mods), 0.28 * len(items) + 2), dpi=100, squeeze=False)
    labels = gate_labels(item_table, items)
    for ax, m in zip(axes[0], mods):
        im = ax.imshow(stats[m]["gates"], aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(items)), labels, fontsize=7)
        ax.set_xlabel("dimension of the behaviour embedding")
        ax.set_title(f"{model} +BeFA gate g_{m} (eval mode)")
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_cosines(stats: dict[str, dict[str, Any]], path: Path, model: str) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    bins = np.linspace(-1, 1, 41)
    for m, s in stats.items():
        axes[0].hist(s["content_vs_adapted"], bins=bins, alpha=0.6, label=m)
        axes[1].hist(s["behaviour_vs_adapted"], bins=bins, alpha=0.6, label=m)
    axes[0].set_title("cos(c_m, adapted_m): content before vs after BeFA")
    axes[1].set_title("cos(E_i, adapted_m): behaviour before vs after gating")
    for ax in axes:
        ax.set_xlabel("cosine (all items)")
        ax.set_ylabel("items")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{model} +BeFA", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
