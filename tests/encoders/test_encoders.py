"""Frozen encoders: spec strings, registry, CLIP / ImageBind (tiny) / MiniLM on real posters and texts.

No network, no GPU: CLIP and ImageBind run at random init (explicitly requested),
MiniLM with its real packaged weights.
"""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
import torch
from PIL import Image

from encoders import ENCODERS, EncoderError, EncoderSpecError, create_encoder, create_encoders, parse_spec
from encoders.spec import EncoderSpec, WeightsRef, parse_modality_specs

CLIP_SMALL = "ViT-S-32-alt"  # the smallest ViT in open_clip's registry (43 M parameters)
FP_RE = re.compile(r"^[a-z0-9][a-z0-9-]*-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def posters(datasets_root):
    folder = datasets_root / "movielens-100k-posters" / "posters"
    return [Image.open(folder / f"{i}.jpg").convert("RGB") for i in (1, 2, 50, 172)]


TEXTS = ["Star Wars (1977). Luke Skywalker joins forces with a Jedi Knight.", "Toy Story (1995).", "A"]


# ---------------------------------------------------------------- spec strings
def test_parse_single_specs():
    s = parse_spec("clip:ViT-B-32@/models/vitb32.safetensors")
    assert (s.family, s.arch, s.weights) == (
        "clip",
        "ViT-B-32",
        WeightsRef(kind="path", value="/models/vitb32.safetensors"),
    )
    assert parse_spec("clip:ViT-B-32@laion2b_s34b_b79k").weights == WeightsRef(kind="tag", value="laion2b_s34b_b79k")
    assert parse_spec("clip:ViT-B-32@random").weights == WeightsRef(kind="random", seed=0)
    assert parse_spec("clip:ViT-B-32@random:7").weights == WeightsRef(kind="random", seed=7)
    assert parse_spec("imagebind:huge@model.pth").weights.kind == "path"  # checkpoint suffix, no slash
    assert parse_spec(" minilm ") == EncoderSpec(family="minilm")
    assert str(parse_spec("clip:ViT-B-32@random")) == "clip:ViT-B-32@random:0"
    with pytest.raises(EncoderSpecError, match="seed must be an integer"):
        parse_spec("clip:ViT-B-32@random:x")
    with pytest.raises(EncoderSpecError, match="empty encoder spec"):
        parse_spec("")
    with pytest.raises(EncoderSpecError, match="bad family"):
        parse_spec("Clip!:x")


def test_parse_per_modality_specs():
    specs = parse_modality_specs("image=clip:ViT-B-32@/ckpt/a,b.pt,text=minilm")
    assert set(specs) == {"image", "text"}
    assert specs["image"].weights == WeightsRef(kind="path", value="/ckpt/a,b.pt")  # a comma inside a path survives
    assert specs["text"] == EncoderSpec(family="minilm")
    with pytest.raises(EncoderSpecError, match="given twice"):
        parse_modality_specs("image=minilm,image=minilm")
    with pytest.raises(EncoderSpecError, match="does not embed 'image'"):
        create_encoders("image=minilm")
    with pytest.raises(EncoderSpecError, match="per-modality spec"):
        create_encoders("minilm", modalities=["image"])


def test_registry_is_explicit_and_unknown_specs_fail_clearly():
    assert set(ENCODERS) == {"clip", "effnet", "imagebind", "minilm"}
    with pytest.raises(
        EncoderSpecError, match=r"unknown encoder 'foo'.*known encoders: \['clip', 'effnet', 'imagebind', 'minilm'\]"
    ):
        create_encoder("foo:bar@random")
    with pytest.raises(EncoderSpecError, match="unknown open_clip architecture 'ViT-Q-99'"):
        create_encoder("clip:ViT-Q-99@random")
    with pytest.raises(EncoderSpecError, match="unknown ImageBind config 'giant'"):
        create_encoder("imagebind:giant@random")
    # random weights only when asked for
    with pytest.raises(EncoderSpecError, match="say which weights"):
        create_encoder(f"clip:{CLIP_SMALL}")
    with pytest.raises(EncoderSpecError, match="needs a local checkpoint"):
        create_encoder("imagebind:tiny")
    with pytest.raises(EncoderSpecError, match="neither a pretrained tag"):
        create_encoder(f"clip:{CLIP_SMALL}@no_such_tag")


@pytest.mark.parametrize(
    "spec", [f"clip:{CLIP_SMALL}@/no/such/dir/ckpt.safetensors", "imagebind:tiny@/no/such/imagebind.pth"]
)
def test_missing_checkpoint_fails_clearly(spec):
    with pytest.raises(EncoderError, match="checkpoint /no/such.* does not exist"):
        create_encoder(spec)


def test_offline_tag_without_cache_fails_fast_and_points_at_a_checkpoint(monkeypatch):
    import open_clip

    from encoders import clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(clip, "_tag_cached", lambda cfg: False)  # as on a machine that never downloaded it

    def no_download(*args, **kwargs):  # open_clip's own path retries for seconds: it must not be reached
        raise AssertionError("open_clip was asked to fetch weights")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_download)
    with pytest.raises(EncoderError) as err:
        create_encoder("clip:ViT-B-32@laion2b_s34b_b79k")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE=1" in msg and "not in the local cache" in msg
    assert "clip:ViT-B-32@/path/to/" in msg  # says what to do instead


# ---------------------------------------------------------------- shared encoder checks
def check_encoder(enc, posters, dim):
    assert FP_RE.match(enc.fingerprint) and len(enc.fingerprint) <= 64, enc.fingerprint
    # frozen
    assert not enc.training and all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training, "a frozen encoder stays in eval mode"
    info = enc.info()
    for key in ("spec", "name", "fingerprint", "dim", "weights", "random_init", "preprocessing", "source"):
        assert key in info
    assert info["dim"] == dim and info["fingerprint"] == enc.fingerprint
    outs = []
    if "image" in enc.modalities:
        x = enc.encode_images(posters)
        assert x.shape == (len(posters), dim) and x.dtype == torch.float32
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(len(posters)))
        assert torch.equal(x, enc.encode_images(posters)), "not deterministic"
        assert not torch.allclose(x[0], x[1]), "different posters gave the same vector"
        outs.append(x)
    if "text" in enc.modalities:
        t = enc.encode_texts(TEXTS)
        assert t.shape == (len(TEXTS), dim) and t.dtype == torch.float32
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(len(TEXTS)))
        assert torch.equal(t, enc.encode_texts(TEXTS))
        assert not torch.allclose(t[0], t[1])
        # batch composition does not change a row (beyond float noise)
        torch.testing.assert_close(enc.encode_texts(TEXTS[:1])[0], t[0], atol=1e-5, rtol=1e-4)
        outs.append(t)
    return outs


# ---------------------------------------------------------------- CLIP
@pytest.fixture(scope="module")
def clip_random():
    return create_encoder(f"clip:{CLIP_SMALL}@random")


def test_clip_random_init_contract(clip_random, posters):
    enc = clip_random
    check_encoder(enc, posters, 256)
    assert enc.fingerprint.startswith("clip-vit-s-32-alt-random-")
    assert enc.random_init and enc.info()["random_init"] is True
    assert enc.weights_label.startswith("random init")
    assert enc.preprocessing["image"]["interpolation"] == "bicubic"


@pytest.fixture(scope="module")
def tiny_clip_arch(tmp_path_factory):
    """A 2-layer open_clip config registered through open_clip's own config mechanism."""
    import json

    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_cfg")
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    (folder / "befa-test-tiny-vit.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return "befa-test-tiny-vit"


def test_clip_checkpoint_roundtrip_and_fingerprints(tiny_clip_arch, posters, tmp_path):
    from safetensors.torch import save_file

    arch = tiny_clip_arch
    rand = create_encoder(f"clip:{arch}@random")
    check_encoder(rand, posters, 32)
    assert create_encoder(f"clip:{arch}@random").fingerprint == rand.fingerprint  # seeded: same init, same id
    path = tmp_path / "clip_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in rand.model.state_dict().items()}, str(path))
    loaded = create_encoder(f"clip:{arch}@{path}")
    assert not loaded.random_init and loaded.weights.startswith("sha256:")
    # same weights, same function: identical embeddings; the identity differs (checksum vs seed)
    assert torch.equal(loaded.encode_images(posters), rand.encode_images(posters))
    assert torch.equal(loaded.encode_texts(TEXTS), rand.encode_texts(TEXTS))
    assert loaded.fingerprint != rand.fingerprint
    # .pt with a wrapped state_dict and DataParallel prefixes loads the same
    pt = tmp_path / "clip_tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in rand.model.state_dict().items()}}, pt)
    assert torch.equal(create_encoder(f"clip:{arch}@{pt}").encode_images(posters[:1]), rand.encode_images(posters[:1]))
    # other weights: another fingerprint and other vectors
    other = create_encoder(f"clip:{arch}@random:1")
    assert other.fingerprint != rand.fingerprint
    assert not torch.allclose(other.encode_images(posters[:1]), rand.encode_images(posters[:1]))
    # the fingerprint follows the file's content, not its name
    state = rand.model.state_dict()
    state["logit_scale"] = state["logit_scale"] + 1.0
    path2 = tmp_path / "clip_tiny_changed.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path2))
    assert create_encoder(f"clip:{arch}@{path2}").fingerprint != loaded.fingerprint
    # a checkpoint of another architecture fails with the file named
    with pytest.raises(EncoderError, match="could not load checkpoint .*clip_tiny.safetensors"):
        create_encoder(f"clip:{CLIP_SMALL}@{path}")


# ---------------------------------------------------------------- ImageBind (tiny, same classes)
@pytest.fixture(scope="module")
def ib_tiny():
    return create_encoder("imagebind:tiny@random")


def test_imagebind_tiny_contract(ib_tiny, posters):
    check_encoder(ib_tiny, posters, 16)
    assert ib_tiny.fingerprint.startswith("imagebind-tiny-random-")
    assert type(ib_tiny.model).__name__ == "ImageBindModel"
    # only the vision and text towers are built
    for part in (ib_tiny.model.modality_preprocessors, ib_tiny.model.modality_trunks, ib_tiny.model.modality_heads):
        assert set(part.keys()) == {"vision", "text"}
    assert create_encoder("imagebind:tiny@random").fingerprint == ib_tiny.fingerprint
    assert create_encoder("imagebind:tiny@random:3").fingerprint != ib_tiny.fingerprint


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_imagebind_checkpoint_roundtrip(ib_tiny, posters, tmp_path, suffix):
    state = {k: v.contiguous() for k, v in ib_tiny.model.state_dict().items()}
    path = tmp_path / f"ib_tiny{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    loaded = create_encoder(f"imagebind:tiny@{path}")
    assert torch.equal(loaded.encode_images(posters), ib_tiny.encode_images(posters))
    assert torch.equal(loaded.encode_texts(TEXTS), ib_tiny.encode_texts(TEXTS))
    assert loaded.fingerprint != ib_tiny.fingerprint and not loaded.random_init
    assert not any(t.is_meta for t in loaded.model.state_dict().values())


def _full_tiny_imagebind():
    """The package's full ImageBindModel (all six modalities) with the tiny vision/text sizes."""
    from encoders.imagebind import IMAGEBIND_CONFIGS, _imagebind_model

    ib = _imagebind_model()
    kw = IMAGEBIND_CONFIGS["tiny"].model_dump()
    for other in ("audio", "depth", "thermal", "imu"):
        kw.update({f"{other}_embed_dim": 8, f"{other}_num_blocks": 1, f"{other}_num_heads": 1})
    torch.manual_seed(5)
    return ib.ImageBindModel(**kw).eval()


def test_imagebind_full_checkpoint_is_filtered_and_matches_the_package_forward(posters, tmp_path):
    full = _full_tiny_imagebind()
    path = tmp_path / "full.pth"
    torch.save(full.state_dict(), path)
    assert any(k.startswith("modality_trunks.audio.") for k in full.state_dict())
    enc = create_encoder(f"imagebind:tiny@{path}")
    # our preprocessing + towers == the package's own model on the same pixels
    pixels = torch.stack([enc.image_transform(p) for p in posters])
    with torch.no_grad():
        ref = full({"vision": pixels})["vision"]
    torch.testing.assert_close(enc.encode_images(posters), torch.nn.functional.normalize(ref, dim=-1))
    tokens = enc.tokenizer(TEXTS)
    with torch.no_grad():
        ref_t = full({"text": tokens})["text"]
    torch.testing.assert_close(enc.encode_texts(TEXTS), torch.nn.functional.normalize(ref_t, dim=-1))

    # strict about what is built: a missing vision key is an error naming it
    state = full.state_dict()
    del state["modality_heads.vision.2.weight"]
    bad = tmp_path / "missing_key.pth"
    torch.save(state, bad)
    with pytest.raises(EncoderError, match=r"(?s)does not match.*modality_heads\.vision\.2\.weight"):
        create_encoder(f"imagebind:tiny@{bad}")
    # a checkpoint of another size is an error too
    with pytest.raises(EncoderError, match="does not match"):
        create_encoder(f"imagebind:huge@{path}")


# ---------------------------------------------------------------- MiniLM (real weights)
@pytest.fixture(scope="module")
def minilm():
    return create_encoder("minilm")


def test_minilm_contract(minilm, posters):
    (t,) = check_encoder(minilm, posters, 384)
    assert minilm.modalities == ("text",) and not minilm.random_init
    assert minilm.fingerprint.startswith("minilm-all-minilm-l6-v2-")
    with pytest.raises(EncoderError, match="does not embed images"):
        minilm.encode_images(posters)


def test_minilm_nearest_neighbours_on_movielens(minilm, datasets_root):
    """Real weights, real texts: a Star Wars sequel's nearest neighbour is another Star Wars film."""
    from pipeline.data.importers.movielens import movie_text

    items = pd.read_csv(datasets_root / "movielens-100k-posters" / "items.csv").drop_duplicates("movie_id")
    star_wars = {50: "Star Wars (1977)", 172: "Empire Strikes Back, The (1980)", 181: "Return of the Jedi (1983)"}
    subset = pd.concat([items[items.movie_id.isin(star_wars)], items[~items.movie_id.isin(star_wars)].head(150)])
    assert set(subset.movie_id) >= set(star_wars)
    texts = [movie_text(t, o if isinstance(o, str) else "") for t, o in zip(subset.title, subset.overview)]
    x = minilm.encode_texts(texts)
    sim = x @ x.T
    sim.fill_diagonal_(-2)
    ids = subset.movie_id.tolist()
    for sequel in (172, 181):
        nn_id = ids[int(sim[ids.index(sequel)].argmax())]
        assert nn_id in star_wars and nn_id != sequel, f"{star_wars[sequel]} -> {nn_id}"


def test_minilm_local_folder_is_identified_by_content(minilm, tmp_path):
    from encoders.minilm import packaged_model_path

    copy = tmp_path / "my-minilm"
    shutil.copytree(packaged_model_path(), copy)
    same = create_encoder(f"minilm@{copy}")
    assert same.fingerprint == minilm.fingerprint  # same files, same function, wherever they live
    assert torch.equal(same.encode_texts(TEXTS[:2]), minilm.encode_texts(TEXTS[:2]))
    (copy / "1_Pooling" / "config.json").write_text(
        (copy / "1_Pooling" / "config.json")
        .read_text()
        .replace('"pooling_mode_mean_tokens": true', '"pooling_mode_mean_tokens": false')
        .replace('"pooling_mode_cls_token": false', '"pooling_mode_cls_token": true')
    )
    assert create_encoder(f"minilm@{copy}").fingerprint != minilm.fingerprint  # another pooling, another id
    with pytest.raises(EncoderError, match="not a sentence-transformers model folder"):
        create_encoder(f"minilm@{tmp_path / 'nothing'}")


def test_validate_specs_checks_every_family_without_building(tmp_path):
    from encoders import validate_specs

    assert {m: str(s) for m, s in validate_specs("clip:ViT-B-32@random").items()} == {
        "image": "clip:ViT-B-32@random:0",
        "text": "clip:ViT-B-32@random:0",
    }
    assert list(validate_specs("image=imagebind:tiny@random,text=minilm")) == ["image", "text"]
    with pytest.raises(EncoderSpecError, match="unknown open_clip architecture"):
        validate_specs("image=clip:ViT-Q-99@random,text=minilm")
    with pytest.raises(EncoderError, match="does not exist"):
        validate_specs(f"clip:ViT-B-32@{tmp_path}/missing.safetensors")
    with pytest.raises(EncoderSpecError, match="needs a local checkpoint"):
        validate_specs("imagebind:huge")
    with pytest.raises(EncoderSpecError, match="minilm takes no tag"):
        validate_specs("minilm@random")
    with pytest.raises(EncoderError, match="not a sentence-transformers model folder"):
        validate_specs(f"minilm@{tmp_path}/nothing-here")
