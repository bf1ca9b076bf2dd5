"""Texts cut to what a tokenizer keeps, in characters, before they are tokenized.

A text encoder keeps its first ``max_tokens`` tokens (MiniLM 256 word pieces, CLIP and
ImageBind 77 BPE tokens) and drops the rest, but its tokenizer first tokenizes the whole
string: a 10 MB text cell made MiniLM extraction peak at 2.7 GB for tokens it then threw
away. :func:`fit_text` cuts a text longer than ``max_tokens * CHARS_PER_TOKEN`` characters
first, at a whitespace boundary (so every word kept is tokenized as in the whole text),
and, when the encoder gives a token counter, checks that the cut text still yields at least
``max_tokens`` tokens: if not (a text of very long words, or mostly spaces), it takes 4x more
characters and checks again. So the tokens the encoder keeps, and its features, are those
of the whole text; only the work on the part it would drop is saved. The cut is no part of
an encoder's fingerprint: it does not change what the encoder computes.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

# English runs ~4-5 characters per word piece or BPE token; 8 leaves room, and the token
# count check covers texts that need more
CHARS_PER_TOKEN = 8
_LAST_SPACE = re.compile(r"\s\S*\Z")


def _head(text: str, budget: int) -> str:
    """The first ``budget`` characters, ended at the last whitespace when it falls in the
    second half (one very long word is cut where the budget ends)."""
    if text[budget].isspace():
        return text[:budget]
    head = text[:budget]
    match = _LAST_SPACE.search(head)
    return head[: match.start()] if match is not None and match.start() > budget // 2 else head


def fit_text(text: str, max_tokens: int, count_tokens: Callable[[str], int] | None = None) -> str:
    """``text`` cut to what a tokenizer keeping ``max_tokens`` of its tokens (special tokens
    apart) uses (see the module docstring); a text within the budget comes back as it is.
    ``count_tokens`` counts a text's tokens, special tokens apart, untruncated."""
    budget = max(1, max_tokens) * CHARS_PER_TOKEN
    while len(text) > budget:
        head = _head(text, budget)
        if count_tokens is None or count_tokens(head) >= max_tokens:
            return head
        budget *= 4
    return text


def fit_texts(texts: Sequence[str], max_tokens: int, count_tokens: Callable[[str], int] | None = None) -> list[str]:
    return [fit_text(t, max_tokens, count_tokens) for t in texts]
