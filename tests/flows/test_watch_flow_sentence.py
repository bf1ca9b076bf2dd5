"""The Prefect watch logs CatalogChange.sentence, the sentence `befa watch` prints (no server: the
flow's body runs with its task, logger and event emitter replaced)."""

from __future__ import annotations

import flows.watch_flow as watch_flow
from pipeline.job.watch import CatalogChange, CatalogDiff


class _Logger:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str, *args) -> None:
        self.lines.append(("info", message % args if args else message))

    def error(self, message: str, *args) -> None:
        self.lines.append(("error", message % args if args else message))


def test_the_flow_logs_the_same_sentences(monkeypatch):
    changes = [
        CatalogChange(
            catalog="shop",
            changed=True,
            reason="content changed",
            diff=CatalogDiff(text_changed=["1"]),
            items_reencoded=["1"],
            encoded={"text": 1},
        ),
        CatalogChange(catalog="ml", changed=False, reason="source files untouched"),
        CatalogChange(catalog="gone", changed=False, reason="watch failed", error="items.csv: missing"),
    ]
    logger, events = _Logger(), []
    monkeypatch.setattr(watch_flow, "watch_task", lambda catalogs: changes)
    monkeypatch.setattr(watch_flow, "get_run_logger", lambda: logger)
    monkeypatch.setattr(watch_flow, "emit_event", lambda **kw: events.append(kw))
    out = watch_flow.watch.fn(catalogs=None, retrain=False)
    assert [c["catalog"] for c in out] == ["shop", "ml", "gone"] and len(events) == 1
    assert logger.lines == [
        ("info", changes[0].sentence(event=watch_flow.EVENT, retrain=False)),
        ("info", changes[1].sentence()),
        ("error", changes[2].sentence()),
    ]
    assert logger.lines[0][1].startswith("shop changed (content changed): +0 -0 items, 1 texts and 0 images edited")
