"""Feature commands: ``befa extract`` and ``befa export-mmrec`` (features as training reads them)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.checks import at_least, device_or_fail, encoder_or_fail
from pipeline.cli.common import CommandGroup, FeatureStoreOpt, Home, console, fail, settings_from
from pipeline.data.catalog import CatalogError
from pipeline.features.backend import BACKEND_HELP, BACKENDS
from pipeline.features.export_mmrec import export_command
from pipeline.features.extract import extract_command
from pipeline.job.params import DEFAULT_ENCODER
from pipeline.reporting.console import summary_table
from storage.keys import check_modality

commands = CommandGroup()


@commands.command("extract")
def extract_cmd(
    dataset: str = typer.Option(..., "--dataset", help="Ingested catalog name."),
    encoder: str = typer.Option(
        DEFAULT_ENCODER,
        "--encoder",
        help="Encoder spec (default: `befa run`'s), e.g. minilm, effnet:lite2, "
        "clip:ViT-B-32@/models/vitb32.safetensors, clip:ViT-B-32@random, imagebind:huge@/models/imagebind_huge.pth, "
        "or image=...,text=...; 'imported': the catalog's imported features (an MMRec folder's "
        "<modality>_feat.npy), nothing encoded.",
    ),
    batch_size: Optional[int] = typer.Option(None, help="Items per forward pass (default: sized to the device)."),
    num_workers: Optional[int] = typer.Option(None, help="Image decoding worker processes (default: by device)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when present)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP[0].upper() + BACKEND_HELP[1:] + "."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Embed a catalog's images/texts with a frozen encoder into the feature store (incremental)."""
    at_least(batch_size, "--batch-size")
    at_least(num_workers, "--num-workers", 0)
    device_or_fail(device)
    if backend not in BACKENDS:
        fail(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    settings = settings_from(None, home, feature_store)
    encoder_or_fail(encoder, settings.catalog_dir(dataset), dataset)
    try:
        summary = extract_command(
            dataset,
            encoder,
            settings,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            backend=backend,
        )
    except (CatalogError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    console.print(summary_table(summary))


@commands.command("export-mmrec")
def export_mmrec_cmd(
    name: str = typer.Argument(..., help="Ingested catalog name."),
    split: str = typer.Option(..., help="Stored split name, e.g. random-s2024."),
    dest: Path = typer.Option(..., help="Output folder for <name>.inter and *_feat.npy."),
    image_fp: Optional[str] = typer.Option(None, help="Feature-store fingerprint of the image features."),
    text_fp: Optional[str] = typer.Option(None, help="Feature-store fingerprint of the text features."),
    fp: Optional[list[str]] = typer.Option(
        None,
        "--fp",
        help="MODALITY=FINGERPRINT, repeatable: any modality's features (audio=..., video=...), "
        "written as <modality>_feat.npy. Default, with no --*-fp: an MMRec catalog's own imported ones.",
    ),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Export a catalog, a split and features in the MMRec toolbox format (.inter + .npy)."""
    fps = {m: f for m, f in (("image", image_fp), ("text", text_fp)) if f}
    try:
        fps.update(_named_fingerprints(fp or [], fps))
        out = export_command(name, split, dest, settings_from(None, home, feature_store), fingerprints=fps or None)
    except (CatalogError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    console.print(f"exported {out['rows']} interactions of {out['items']} items to {out['inter']}")
    console.print(f"  features {out['features']}, rows mean-filled as in training: {out['mean_filled_rows']}")
    if out["items_without_interactions"]:
        console.print(
            f"  {out['items_without_interactions']} items have no interaction: "
            "they come first in item_map.tsv's itemID order, so MMRec (items = max itemID + 1) sees every item"
        )


def _named_fingerprints(values: list[str], given: dict[str, str]) -> dict[str, str]:
    """``--fp MODALITY=FINGERPRINT`` values as {modality: fingerprint}, each modality once."""
    out: dict[str, str] = {}
    for value in values:
        modality, eq, fingerprint = value.partition("=")
        modality, fingerprint = modality.strip(), fingerprint.strip()
        if not eq or not fingerprint:
            raise ValueError(f"--fp {value!r}: give MODALITY=FINGERPRINT (e.g. audio=mmrec-npy-audio-0123456789ab)")
        check_modality(modality, f"--fp {value!r}")
        if modality in out or modality in given:
            raise ValueError(f"--fp {value!r}: the {modality} fingerprint is given twice")
        out[modality] = fingerprint
    return out
