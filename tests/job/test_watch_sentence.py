"""`befa watch` and the Prefect watch say what a watch found in the same sentence (CatalogChange.sentence)."""

from __future__ import annotations

from pipeline.job.watch import CatalogChange, CatalogDiff


def _changed() -> CatalogChange:
    return CatalogChange(
        catalog="shop",
        changed=True,
        reason="content changed",
        diff=CatalogDiff(added=["a", "b"], removed=["c"], text_changed=["d"], interactions_changed=True),
        items_reencoded=["a", "b", "d"],
        encoded={"image": 2, "text": 3},
        seconds=1.25,
    )


def test_a_change_is_one_sentence_with_counts():
    said = _changed().sentence()
    assert said == (
        "shop changed (content changed): +2 -1 items, 1 texts and 0 images edited, interactions changed; "
        "3 items re-encoded (vectors encoded: 2 image, 3 text) in 1.2 s"
    )
    assert "\n" not in said and "{" not in said


def test_the_flow_form_names_the_event_and_retrain_off():
    change = _changed()
    assert change.sentence(event="befa.features.updated").endswith("; event befa.features.updated emitted")
    assert change.sentence(event="befa.features.updated", retrain=False).endswith(
        "; event befa.features.updated emitted (retrain off)"
    )


def test_unchanged_and_failed_catalogs():
    same = CatalogChange(catalog="shop", changed=False, reason="source files untouched")
    assert same.sentence() == "shop unchanged (source files untouched)"
    failed = CatalogChange(catalog="gone", changed=False, reason="watch failed", error="/x/items.csv: missing")
    assert failed.sentence() == "gone: watch failed, skipped: /x/items.csv: missing"
