"""What every command shares: the console, the storage-location options, settings from
them, failing with a message (exit 2, no traceback), and command groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer

from pipeline.reporting.terminal import make_console
from pipeline.settings import Settings, get_settings

console = make_console()  # full-width plain lines when stdout is not a terminal
DatasetsRoot = typer.Option(None, "--datasets-root", envvar="BEFA_DATASETS_ROOT", help="Folder holding raw datasets.")
Home = typer.Option(
    None, "--home", envvar="BEFA_HOME", help="befa storage root (catalogs, splits, runs). Default ./.befa"
)
FeatureStoreOpt = typer.Option(
    None, "--feature-store", envvar="BEFA_FEATURE_STORE", help="Feature store root: path or fsspec URI."
)


def settings_from(datasets_root: Optional[Path], home: Optional[Path], feature_store: Optional[str] = None) -> Settings:
    return get_settings(datasets_root=datasets_root, home=home, feature_store=feature_store)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


class CommandGroup:
    """Commands of one module, registered on the app by ``pipeline.cli.main`` in one place."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, Callable[..., Any], dict[str, Any]]] = []

    def command(self, name: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.commands.append((name, fn, options))
            return fn

        return register

    def external(self, name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
        """A command whose click command is built elsewhere (the Prefect commands' typer apps in
        ``flows``): the decorated function returns it, and is called only when the command is asked for."""

        def register(fn: Callable[[], Any]) -> Callable[[], Any]:
            self.commands.append((name, fn, {"external": True}))
            return fn

        return register

    def add_to(self, app: typer.Typer) -> None:
        for name, fn, options in self.commands:
            if not options.get("external"):
                app.command(name, **options)(fn)

    def external_command(self, name: str) -> Any:
        """The click command of an :meth:`external` command (None when ``name`` is not one)."""
        return next((fn() for n, fn, options in self.commands if n == name and options.get("external")), None)


def csv_list(value: Optional[str]) -> Optional[list[str]]:
    """``"a, b"`` -> ``["a", "b"]``; None stays None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
