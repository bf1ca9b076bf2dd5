"""--text-template: an item's text from several item-table columns, checked before any work."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from pipeline.data.catalog import CatalogError
from pipeline.data.importers import IMPORTERS
from pipeline.data.importers.text_template import parse_text_template, render_text_template, template_columns
from tests.data.test_validation import make_shop, run

TEMPLATE = "{name}. {product_type}, {colour}. {description}"
FASHION = [
    {"item_id": "0108775015", "name": "Strap top", "product_type": "Vest top", "colour": "Black",
     "description": "Jersey top with narrow shoulder straps.", "image": "a.jpg"},
    {"item_id": "0108775044", "name": "Strap top", "product_type": "Vest top", "colour": "White",
     "description": "Jersey top with narrow shoulder straps.", "image": "b.jpg"},
    {"item_id": "0110065001", "name": "OP T-shirt (Idro)", "product_type": "Bra", "colour": "",
     "description": "", "image": "c.jpg"},
]  # fmt: skip
EVENTS = [{"user_id": "u1", "item_id": i["item_id"]} for i in FASHION]


def test_the_template_renders_each_row_and_skips_empty_cells():
    table = pd.DataFrame(
        FASHION + [{"item_id": "X", "name": "", "product_type": None, "colour": "", "description": ""}]
    )
    texts = render_text_template(TEMPLATE, table).tolist()
    assert texts[0] == "Strap top. Vest top, Black. Jersey top with narrow shoulder straps."
    assert texts[1] == "Strap top. Vest top, White. Jersey top with narrow shoulder straps."
    assert texts[2] == "OP T-shirt (Idro). Bra, ."  # the literal text stays as written
    assert texts[3] == ""  # every named cell empty: no text
    assert template_columns("{a} {b} {a}") == ["a", "b"]
    assert render_text_template("{{{a}}}", pd.DataFrame({"a": ["x"]})).tolist() == ["{x}"]  # literal braces


@pytest.mark.parametrize("bad", ["{a.b}", "{a[0]}", "{}", "{a!r}", "{a:>5}", "{a", "b}", "plain text"])
def test_only_plain_column_names_are_fields(bad):
    with pytest.raises(ValueError, match="template field|names no column|literal braces"):
        parse_text_template(bad)
    with pytest.raises(ValueError, match="text_template"):  # the option itself refuses it, before any file
        IMPORTERS["generic"].Options(items="i.csv", interactions="e.csv", text_template=bad)


def test_ingest_builds_the_texts_from_the_template(tmp_path):
    paths = make_shop(tmp_path, items=FASHION, interactions=EVENTS)
    res = run(paths, name="fashion", text_template=TEMPLATE, title_column="name")
    items = res.catalog.items.set_index("item_id")
    text = "Strap top. Vest top, White. Jersey top with narrow shoulder straps."
    assert items.loc["0108775044", "text"] == text and items.loc["0108775044", "title"] == "Strap top"
    assert items.loc["0108775044", "text_hash"] == hashlib.sha256(text.encode()).hexdigest()
    assert f"texts: --text-template {TEMPLATE!r}" in res.report.notes
    # the template's columns are content: two rows of one id that differ in colour conflict
    clash = [*FASHION, {**FASHION[0], "colour": "Red"}]
    with pytest.raises(CatalogError, match="0108775015"):
        run(make_shop(tmp_path / "b", items=clash, interactions=EVENTS), text_template=TEMPLATE)


def test_an_unknown_column_is_named_before_any_table_is_read(tmp_path, monkeypatch):
    paths = make_shop(tmp_path, items=FASHION, interactions=EVENTS)
    items = pd.DataFrame(FASHION)
    parquet = paths["items"].with_suffix(".parquet")
    items.to_parquet(parquet)
    generic = type(IMPORTERS["generic"])
    monkeypatch.setattr(generic, "_read_interactions", lambda *a: pytest.fail("the interactions were read first"))
    for table in (paths["items"], parquet):
        with pytest.raises(CatalogError) as err:
            run({**paths, "items": table}, text_template="{name} in {color}")
        said = str(err.value)
        assert f"{table.name}: --text-template '{{name}} in {{color}}' names a column the item table does not" in said
        assert "'color'; its columns are ['item_id', 'name', 'product_type', 'colour', 'description'" in said
