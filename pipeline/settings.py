"""Where befa reads datasets from and writes everything else.

Every location can be set by an environment variable or by the CLI flag of the
same name; nothing is hard-coded to this machine.

- ``BEFA_DATASETS_ROOT``: folder holding raw datasets (one sub-folder per
  dataset, e.g. ``movielens-100k-posters/``). CI points it at ``../shared/datasets``.
- ``BEFA_HOME``: befa's own storage root (ingested catalogs, splits, runs).
  Defaults to ``./.befa`` in the working directory.
- ``BEFA_FEATURE_STORE``: root of the Parquet feature store. A local path or any
  fsspec URI (``s3://bucket/features``, ``memory://features``). Defaults to
  ``$BEFA_HOME/features``.

Image URLs are downloaded (only by ``befa fetch-images``) into ``$BEFA_HOME/image-cache``;
encoders exported for ONNX Runtime live in ``$BEFA_HOME/onnx``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field


class Settings(BaseModel):
    datasets_root: Path = Field(description="Folder with raw datasets, one sub-folder each.")
    home: Path = Field(description="befa storage root: catalogs, splits, runs.")
    feature_store: str = Field(description="Feature store root: local path or fsspec URI.")

    @property
    def catalogs_dir(self) -> Path:
        return self.home / "catalogs"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def image_cache_dir(self) -> Path:
        """Downloaded image URLs (``pipeline.data.image_cache``)."""
        return self.home / "image-cache"

    @property
    def onnx_dir(self) -> Path:
        """Encoders exported for ONNX Runtime, and the measured backend choices (``pipeline.features.backend``)."""
        return self.home / "onnx"

    def catalog_dir(self, name: str) -> Path:
        return self.catalogs_dir / name


def get_settings(
    datasets_root: str | os.PathLike | None = None,
    home: str | os.PathLike | None = None,
    feature_store: str | None = None,
) -> Settings:
    """Resolve settings: explicit argument, then environment variable, then default."""
    home_path = Path(home or os.environ.get("BEFA_HOME") or ".befa").expanduser().resolve()
    ds_root = Path(datasets_root or os.environ.get("BEFA_DATASETS_ROOT") or "datasets").expanduser().resolve()
    store = feature_store or os.environ.get("BEFA_FEATURE_STORE") or str(home_path / "features")
    return Settings(datasets_root=ds_root, home=home_path, feature_store=store)
