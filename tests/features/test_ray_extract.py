"""Feature extraction on Ray Data equals the local extraction (local Ray, 2 CPUs, started and stopped here)."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from pipeline.cluster import runtime_env  # noqa: E402
from pipeline.data.catalog import Catalog  # noqa: E402
from pipeline.data.ingest import ingest  # noqa: E402
from pipeline.features.extract import extract_features  # noqa: E402
from pipeline.features.load import load_features  # noqa: E402
from pipeline.features.ray_extract import extract_features_ray  # noqa: E402
from pipeline.settings import get_settings  # noqa: E402
from storage.feature_store import FeatureStore  # noqa: E402
from tests.flows_data import make_small_catalog  # noqa: E402

SPEC = "imagebind:tiny@random"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env())
    yield
    ray.shutdown()


def test_ray_extraction_matches_local_and_is_incremental(local_ray, tmp_path, datasets_root):
    cat = make_small_catalog(tmp_path / "src", datasets_root, n_items=24, n_users=60)
    settings = get_settings(home=tmp_path / "home", datasets_root=datasets_root)
    catalog, _ = ingest("generic", settings, name="ml-ray", **cat.ingest_options())
    local_store, ray_store = FeatureStore(tmp_path / "local"), FeatureStore(tmp_path / "ray")

    local = extract_features(catalog, SPEC, local_store, batch_size=8, progress=False)
    dist = extract_features_ray(catalog, SPEC, ray_store, cluster="auto", batch_size=8)
    assert set(dist.modalities) == {"image", "text"}
    for m in ("image", "text"):
        a, b = local.modalities[m], dist.modalities[m]
        assert (b.encoded, b.skipped, b.failed) == (a.encoded, 0, 0) == (24, 0, 0)
        assert b.fingerprint == a.fingerprint and b.random_init
    fps = {m: s.fingerprint for m, s in local.modalities.items()}
    local, remote = load_features(catalog, local_store, fps), load_features(catalog, ray_store, fps)
    fa, ma, fb, mb = local.features, local.masks, remote.features, remote.masks
    for m in fps:
        assert bool(mb[m].all()) and bool(ma[m].all())
        np.testing.assert_allclose(fb[m].numpy(), fa[m].numpy(), rtol=0, atol=1e-6)

    # incremental: one edited poster -> one image re-encoded on Ray, texts untouched
    cat.replace_poster(str(catalog.items["item_id"].iloc[3]), with_poster_of=cat.spare_ids[0])
    catalog2, _ = ingest("generic", settings, name="ml-ray", **cat.ingest_options())
    again = extract_features_ray(
        Catalog.load(settings.catalog_dir("ml-ray")), SPEC, ray_store, cluster="auto", batch_size=8
    )
    assert again.modalities["image"].encoded == 1 and again.modalities["image"].skipped == 23
    assert again.modalities["text"].encoded == 0
    assert catalog2.num_items == 24
