"""Images on their way to an encoder: a Dataset that reads, checks and preprocesses them in
DataLoader workers, its collate function, and the loader settings.

Reading goes through :func:`pipeline.data.importers.images.read_image_bytes`, the one
reader of image references (local path, ``file://``, an fsspec URI, or an ``http(s)://``
URL read from the image cache the catalog was ingested with: never fetched). The bytes are
checked against the catalog's hash, so a feature is never stored under a hash it was
not computed from, and a bad image is reported, not raised. A decoded image is turned
upright (its EXIF orientation applied) and made 8-bit RGB by
:func:`pipeline.data.image_modes.to_rgb` before the encoder's transform.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipeline.data.image_cache import ImageCache, ImageNotDownloaded
from pipeline.data.image_modes import to_rgb
from pipeline.data.importers.images import read_image_bytes
from pipeline.device import cpu_count


class ImageItems(Dataset):
    """Images to encode; ``__getitem__`` runs in DataLoader workers (or Ray actors).

    Returns ``(position, pixels, None)`` or ``(position, None, reason)``: one broken
    file does not stop the run.
    """

    def __init__(
        self,
        refs: Sequence[str],
        hashes: Sequence[str],
        transform: Callable[[Image.Image], torch.Tensor],
        cache_root: str | None = None,
    ):
        self.refs = list(refs)
        self.hashes = list(hashes)
        self.transform = transform
        # a path, not an ImageCache: the dataset is pickled into DataLoader workers
        self.cache_root = cache_root

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, pos: int) -> tuple[int, torch.Tensor | None, str | None]:
        ref = self.refs[pos]
        try:
            data = read_image_bytes(ref, ImageCache(self.cache_root) if self.cache_root else None)
        except ImageNotDownloaded as exc:
            return pos, None, str(exc)
        except FileNotFoundError:
            return pos, None, f"image file missing: {ref}"
        except Exception as exc:
            return pos, None, f"image unreadable ({type(exc).__name__}: {exc}): {ref}"
        if hashlib.sha256(data).hexdigest() != self.hashes[pos]:
            return pos, None, f"image changed since ingest (sha256 differs from the catalog; re-run ingest): {ref}"
        try:
            with Image.open(io.BytesIO(data)) as img:
                pixels = self.transform(to_rgb(img))
        except Exception as exc:  # PIL raises many types
            return pos, None, f"image does not decode ({type(exc).__name__}: {exc}): {ref}"
        return pos, pixels, None


def collate_images(batch: list[tuple[int, torch.Tensor | None, str | None]]):
    """``(positions, stacked pixels or None, [(position, reason)])`` of one batch."""
    ok = [(p, x) for p, x, err in batch if err is None]
    bad = [(p, err) for p, _, err in batch if err is not None]
    positions = [p for p, _ in ok]
    pixels = torch.stack([x for _, x in ok]) if ok else None
    return positions, pixels, bad


def _worker_init(_: int) -> None:
    # Workers only decode and resize: one thread each, or they fight the forward pass for cores.
    torch.set_num_threads(1)


def default_num_workers(device: torch.device) -> int:
    """Decoding processes (CUDA) or threads (CPU, :mod:`pipeline.features.prefetch`) for ``device``."""
    cores = cpu_count()
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    # On CPU the forward pass needs the cores, but a photo can cost as much to decode as to encode:
    # per image and core, a MovieLens poster takes 2-4 ms to read, check, decode and resize, a 1200 px
    # photo 20-30 ms, a 2000x3000 one 90-100 ms, against 20-40 ms for EfficientNet-Lite2 on ONNX Runtime
    # (docs/benchmarks.md). Half the cores decode; threads with nothing to decode sleep.
    return max(1, cores // 2)


def image_loader(items: ImageItems, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    """A DataLoader over ``items`` in order, yielding ``collate_images`` batches."""
    return DataLoader(
        items,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if num_workers > 0 else None,
        # a few batches ahead per worker hide decoding jitter; on CUDA batches are big, so fewer
        prefetch_factor=(2 if device.type == "cuda" else 4) if num_workers > 0 else None,
        persistent_workers=False,
    )
