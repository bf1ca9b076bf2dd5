"""Prefect artifacts of a pipeline run: test metrics base vs +BeFA, the report, and the
first rows of the recommendations file.

Keys are stable per catalog (``befa-metrics-<catalog>``, ``befa-report-<catalog>``,
``befa-recommendations-<catalog>``), so
the Prefect UI shows one artifact per catalog with its history of versions, one per run.
Artifact keys may hold only lower-case letters, digits and dashes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pipeline.job.result import PipelineResult
from pipeline.reporting.gains import gains_table_rows
from pipeline.reporting.pipeline_report import gains_of, load_runs

MAX_MARKDOWN = 60_000  # keep the artifact small; the full report stays in the run folder


def artifact_key(kind: str, catalog: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", catalog.lower()).strip("-") or "catalog"
    return f"befa-{kind}-{slug}"


def metrics_table_rows(run_dirs: list[str]) -> list[dict[str, Any]]:
    """One row per model and headline metric: base, +BeFA, relative gain, its 95% interval and verdict (as text)."""
    return gains_table_rows(gains_of(load_runs(run_dirs)))


def publish_artifacts(result: PipelineResult) -> dict[str, str]:
    """Create the table and markdown artifacts; returns {kind: key}."""
    catalog = result.ingest.name
    rows = metrics_table_rows([r.run_dir for r in result.runs])
    table_key = artifact_key("metrics", catalog)
    create_table_artifact(
        table=rows,
        key=table_key,
        description=f"Test metrics at the best valid epoch, base vs +BeFA, catalog {catalog} ({result.folder})",
    )
    md_key = artifact_key("report", catalog)
    markdown = Path(result.report.report_md).read_text()
    if len(markdown) > MAX_MARKDOWN:
        markdown = markdown[:MAX_MARKDOWN] + f"\n\n... truncated; full report: `{result.report.report_md}`\n"
    # image links in report.md are relative to the run folder: point at the files instead
    markdown = re.sub(
        r"!\[([^\]]*)\]\(([^)/]+\.png)\)", lambda m: f"{m.group(1)}: `{Path(result.folder) / m.group(2)}`", markdown
    )
    create_markdown_artifact(markdown=markdown, key=md_key, description=f"befa pipeline report, catalog {catalog}")
    keys = {"table": table_key, "markdown": md_key}
    recs = result.recommendations
    if recs is not None:
        keys["recommendations"] = artifact_key("recommendations", catalog)
        create_table_artifact(
            table=[row.model_dump() for row in recs.head] or [{"user_id": "", "rank": 0, "item_id": "", "score": 0.0}],
            key=keys["recommendations"],
            description=(
                f"First rows of the top-K recommendations from {recs.model} {recs.adapter} (best by {recs.chosen_by}), "
                f"{recs.users} users, {recs.rows} rows; full file: {recs.path}"
            ),
        )
    return keys
