"""Feature commands: ``befa extract``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import CommandGroup, FeatureStoreOpt, Home, console, fail, settings_from
from pipeline.data.catalog import CatalogError
from pipeline.features.extract import extract_command
from pipeline.reporting.console import summary_table

commands = CommandGroup()


@commands.command("extract")
def extract_cmd(
    dataset: str = typer.Option(..., "--dataset", help="Ingested catalog name."),
    encoder: str = typer.Option("minilm", "--encoder", help="Encoder spec, e.g. minilm, effnet:lite2, clip:ViT-B-32@/models/vitb32.safetensors, "
                                "clip:ViT-B-32@random, imagebind:huge@/models/imagebind_huge.pth, or image=...,text=..."),
    batch_size: Optional[int] = typer.Option(None, help="Items per forward pass (default: sized to the device)."),
    num_workers: Optional[int] = typer.Option(None, help="Image decoding worker processes (default: by device)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when present)."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Embed a catalog's images/texts with a frozen encoder into the feature store (incremental)."""
    try:
        summary = extract_command(dataset, encoder, settings_from(None, home, feature_store), batch_size=batch_size,
                                  num_workers=num_workers, device=device)
    except (CatalogError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    console.print(summary_table(summary))
