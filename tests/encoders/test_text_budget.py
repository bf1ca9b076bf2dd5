"""Long texts are cut in characters before they are tokenized (encoders/text_budget.py):
a 10 MB text cell reaches the tokenizer as a few thousand characters, and the features of a
normal text, short or long, are those of the uncut text. MiniLM with its real weights; CLIP
and ImageBind (tiny) at random init."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import encoders.clip as clip_module
import encoders.imagebind as imagebind_module
import encoders.minilm as minilm_module
from encoders import create_encoder
from encoders.text_budget import CHARS_PER_TOKEN, fit_text

HUGE = ("lorem ipsum dolor sit amet " * 400_000)[: 10 * 2**20]  # a 10 MB text cell


@pytest.fixture(scope="module")
def overviews(datasets_root):
    """Real movie overviews: one short text, and one of ~20 KB (every overview joined)."""
    items = pd.read_csv(datasets_root / "movielens-100k-posters" / "items.csv").drop_duplicates("movie_id")
    texts = [o for o in items["overview"] if isinstance(o, str) and o]
    return texts[0], " ".join(texts)[:20_000]


def test_fit_text_cuts_at_a_space_and_keeps_what_the_tokenizer_needs():
    assert fit_text("a short text", 256) == "a short text"
    cut = fit_text(HUGE, 256, lambda t: len(t.split()))
    assert len(cut) <= 256 * CHARS_PER_TOKEN and HUGE.startswith(cut) and HUGE[len(cut)] == " "
    # mostly spaces: the first cut holds too few tokens, so it takes more characters until it does
    sparse = " " * 5000 + "word " * 1000
    longer = fit_text(sparse, 100, lambda t: len(t.split()))
    assert len(longer.split()) >= 100 and len(longer) > 100 * CHARS_PER_TOKEN and sparse.startswith(longer)


def _record_lengths(monkeypatch, owner, name):
    """Wrap ``owner.name`` (a tokenizer call) to record the length of every text it is given."""
    seen: list[int] = []
    inner = getattr(owner, name)

    def recording(texts, *args, **kwargs):
        seen.extend(len(t) for t in ([texts] if isinstance(texts, str) else texts))
        return inner(texts, *args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return seen


def _uncut(monkeypatch, module, encoder, texts):
    with monkeypatch.context() as m:
        m.setattr(module, "fit_texts", lambda t, *a: list(t))
        return encoder.encode_texts(texts)


def test_minilm_tokenizes_a_10mb_text_cut_and_normal_texts_as_before(monkeypatch, overviews):
    minilm = create_encoder("minilm")
    # sentence-transformers >= 5 tokenizes in `preprocess`, older ones in `tokenize`
    seen = _record_lengths(
        monkeypatch, minilm.model, "preprocess" if hasattr(minilm.model, "preprocess") else "tokenize"
    )
    huge = minilm.encode_texts([HUGE])
    assert huge.shape == (1, 384) and torch.isfinite(huge).all()
    assert seen and max(seen) <= (minilm.model.max_seq_length - 2) * CHARS_PER_TOKEN  # not 10 MB
    short, long = overviews
    for text in (short, long):
        seen.clear()
        cut = minilm.encode_texts([text])
        if text is long:
            assert max(seen) < len(long)  # the long one was cut ...
        torch.testing.assert_close(cut, _uncut(monkeypatch, minilm_module, minilm, [text]), atol=1e-6, rtol=0)


class _Recording:
    """A tokenizer that records the length of every text it is called with."""

    def __init__(self, tokenizer, seen: list[int]):
        self.inner, self.seen = tokenizer, seen

    def __call__(self, texts, *args, **kwargs):
        self.seen.extend(len(t) for t in ([texts] if isinstance(texts, str) else texts))
        return self.inner(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("family", ["imagebind", "clip"])
def test_clip_and_imagebind_cut_too(monkeypatch, overviews, family):
    seen: list[int] = []
    if family == "imagebind":
        encoder, module = create_encoder("imagebind:tiny@random"), imagebind_module
        monkeypatch.setattr(encoder, "_tokenizer", _Recording(encoder.tokenizer, seen))
    else:
        encoder, module = create_encoder("clip:ViT-S-32-alt@random"), clip_module
        monkeypatch.setattr(encoder, "tokenizer", _Recording(encoder.tokenizer, seen))
    out = encoder.encode_texts([HUGE])
    assert torch.isfinite(out).all() and seen and max(seen) <= 75 * CHARS_PER_TOKEN  # 77 tokens of context
    short, long = overviews
    seen.clear()
    both = encoder.encode_texts([short, long])
    assert seen == [len(short), pytest.approx(75 * CHARS_PER_TOKEN, abs=40)]  # the long one was cut
    torch.testing.assert_close(both, _uncut(monkeypatch, module, encoder, [short, long]), atol=1e-6, rtol=0)
