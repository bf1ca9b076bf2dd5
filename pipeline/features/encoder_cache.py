"""Which fingerprint a spec builds, known without building the encoder.

An encoder's fingerprint covers its weights and preprocessing, which only a built encoder
knows (18-32 s to load CLIP/EfficientNet and MiniLM). So that "nothing to encode" costs no
encoder at all, extraction remembers, per *resolution key*, the fingerprint a spec built:
``<store>/_encoders/resolved/<key>.json``. The key covers everything that could make the
same spec build another encoder:

- the canonical spec string;
- every installed distribution and its version (packaged weights such as MiniLM's and
  EfficientNet's, and the libraries whose preprocessing the fingerprint records, live there);
- the source of befa's ``encoders`` package (preprocessing defined in code);
- for a local checkpoint, the size and modification time of its file (or of every file of
  its folder).

Change any of it and the key changes, the encoder is built once, and the new answer is
remembered. The answer is only trusted while the store still holds that fingerprint's
encoder record.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
from pathlib import Path

import encoders.base
from encoders.spec import EncoderSpec
from storage.feature_store import FeatureStore

RESOLVED_DIR = ("_encoders", "resolved")


@functools.lru_cache(maxsize=1)
def _environment() -> str:
    dists = sorted(f"{d.metadata.get('Name', '')}=={d.version}" for d in importlib.metadata.distributions())
    code = Path(encoders.base.__file__).parent
    sources = [(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(code.glob("*.py"))]
    return hashlib.sha256(json.dumps([dists, sources]).encode()).hexdigest()


def _weights_stat(spec: EncoderSpec) -> list[tuple[str, int, int]]:
    weights = spec.weights
    if weights is None or weights.kind != "path" or not weights.value:
        return []
    path = Path(weights.value).expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:  # vanished: the key changes, so the encoder gets built (and says what is wrong)
            continue
        out.append((str(f), st.st_size, st.st_mtime_ns))
    return out


def resolution_key(spec: EncoderSpec) -> str:
    payload = {"spec": str(spec), "environment": _environment(), "weights": _weights_stat(spec)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _path(store: FeatureStore, spec: EncoderSpec) -> str:
    return store.fs.join(*RESOLVED_DIR, f"{resolution_key(spec)}.json")


def known_fingerprint(store: FeatureStore, spec: EncoderSpec) -> tuple[str, dict] | None:
    """(fingerprint, its encoder record) this spec builds here, when known; else None."""
    data = store.fs.read_bytes(_path(store, spec))
    if data is None:
        return None
    try:
        fingerprint = json.loads(data)["fingerprint"]
    except (ValueError, KeyError):
        return None  # damaged: build the encoder and write it anew
    info = store.encoder_info(fingerprint)
    return (fingerprint, info) if info is not None else None


def remember_fingerprint(store: FeatureStore, spec: EncoderSpec, fingerprint: str) -> None:
    path = _path(store, spec)
    if store.fs.is_local:  # remote filesystems make parents on write; a local rename needs the folder
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    store.fs.write_bytes(path, json.dumps({"spec": str(spec), "fingerprint": fingerprint}).encode())
