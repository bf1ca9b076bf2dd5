"""Known third-party notices stay out of a library run's output, as out of the CLI's
(pipeline.quiet): a fresh process, stderr a pipe (not a terminal), training LightGCN (its
graph is a sparse CSR tensor), then extracting with MiniLM's real weights and training FREEDOM
on content graphs, all through the library entry points. LightGCN goes first: importing
sentence-transformers silences PyTorch's sparse-CSR note itself, which would hide a regression."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import warnings

from pipeline.quiet import KNOWN_WARNINGS, _DropKnownMessages, quiet_known_warnings
from tests.conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pipeline.data.ingest import ingest
    from pipeline.data.splits import split_random
    from pipeline.features.extract import extract_features
    from pipeline.features.load import load_features
    from pipeline.settings import get_settings
    from pipeline.training.api import train_model
    from storage.feature_store import FeatureStore
    from tests.flows_data import make_small_catalog

    tmp, datasets = Path(sys.argv[1]), Path(sys.argv[2])
    settings = get_settings(home=tmp / "home", datasets_root=datasets)
    cat = make_small_catalog(tmp / "src", datasets, n_items=20, n_users=60)
    catalog, _ = ingest("generic", settings, name="shop", **cat.ingest_options())
    split = split_random(catalog, seed=1)
    train_model(catalog, split, None, "lightgcn", overrides={"embedding_dim": 8}, run_dir=tmp / "lightgcn",
                max_epochs=2, patience=2, num_threads=1)
    store = FeatureStore(settings.feature_store)
    extracted = extract_features(catalog, "image=imagebind:tiny@random,text=minilm", store, progress=True)
    features = load_features(catalog, store, {m: s.fingerprint for m, s in extracted.modalities.items()})
    result = train_model(catalog, split, features, "freedom", overrides={"embedding_dim": 8}, run_dir=tmp / "run",
                         max_epochs=2, patience=2, num_threads=1)
    print("trained", result.record.status, flush=True)
    """
)
NOISE = (
    "torch.jit.script` is deprecated",
    "Sparse CSR tensor support is in beta state",
    "Sparse invariant checks are implicitly disabled",
    "Loading weights",
    "No pretrained weights loaded",
    "\r",
)


def test_library_entry_points_print_none_of_the_known_notices(tmp_path, datasets_root):
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(datasets_root)],
        capture_output=True, cwd=REPO, env=env, timeout=600,
    )  # fmt: skip
    said = (run.stdout + run.stderr).decode()  # bytes as written: text mode would turn \r into \n
    assert run.returncode == 0, said
    assert "trained" in said
    assert [n for n in NOISE if n in said] == [], said
    # progress into a pipe is line-based: a line per modality at the end at least
    assert "extract text (minilm" in said and "done in" in said, said


def test_quiet_known_warnings_silences_each_known_warning_and_nothing_else():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        quiet_known_warnings()  # twice changes nothing
        for category, pattern in KNOWN_WARNINGS:
            warnings.warn(pattern.replace("\\", "") + " (as the library words it)", category)
        warnings.warn("Sparse matrices of your own, a UserWarning befa does not know", UserWarning)
    assert [str(w.message) for w in caught] == ["Sparse matrices of your own, a UserWarning befa does not know"]
    root = logging.getLogger()
    assert sum(isinstance(f, _DropKnownMessages) for f in root.filters) == 1
    assert not root.filter(logging.makeLogRecord({"msg": "No pretrained weights loaded for model 'ViT-B-32'"}))
    assert root.filter(logging.makeLogRecord({"msg": "any other message"}))
