"""The study report opens in a real browser from its folder (headless Chromium, no server):
it shows the results table, the sweep plot and the posters, and every image it shows exists
and decodes. Needs the Debian ``chromium`` package (skipped, loudly, without it)."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.study_data import run_tiny_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")


class _Dom(HTMLParser):
    """Collects what the rendered DOM holds: images, tables (cells), element ids."""

    def __init__(self):
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.ids: set[str] = set()
        self.tables: list[dict] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a)
        elif tag == "table":
            self.tables.append({"class": a.get("class", ""), "rows": []})
        elif tag == "tr" and self.tables:
            self._row = []
            self.tables[-1]["rows"].append(self._row)
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={user_data}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory, datasets_root):
    root = tmp_path_factory.mktemp("study-browser")
    _, _, result = run_tiny_study(
        root,
        datasets_root,
        name="browser",
        models=["freedom", "mgcn"],
        max_trials=1,
        sweep_t=[0.5, 2.0],
        train_fractions=[1.0, 0.5],
        inspect_users=2,
    )
    return Path(result.files["report_html"])


def test_report_renders_table_sweep_plot_and_posters(report, tmp_path):
    dom_text = _chromium("--dump-dom", report.as_uri(), user_data=tmp_path / "profile-dom").stdout
    dom = _Dom()
    dom.feed(dom_text)
    # the results table: both models, both metrics, a significance column with p-values
    results = next(t for t in dom.tables if "results" in t["class"])
    header, body = results["rows"][0], results["rows"][1:]
    assert "Wilcoxon p" in header and "relative gain" in header
    assert {r[0] for r in body} == {"freedom", "mgcn"} and {r[1] for r in body} == {"recall@20", "ndcg@20"}
    p_col = header.index("Wilcoxon p")
    assert all(r[p_col] == "n/a" or 0 <= float(r[p_col]) <= 1 for r in body)
    assert "verdict" in dom.ids and "sweep-plot" in dom.ids
    # every image is a relative file in the report folder that exists and decodes
    srcs = [img["src"] for img in dom.images]
    assert any(s.startswith("plots/sweep_t.png") for s in srcs)
    posters = [s for s in srcs if s.startswith("posters/")]
    assert len(posters) >= 2 * 10 + 1  # two users' top-10 lists (twice) plus history
    for src in set(srcs):
        assert "://" not in src, f"{src}: the report must open without a server or network"
        path = report.parent / src
        assert path.exists(), f"{src} is referenced but missing"
        with Image.open(path) as im:
            im.load()
            assert im.width > 10 and im.height > 10


def test_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "study-report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1400,4000", report.as_uri(), user_data=tmp_path / "profile-shot")
    with Image.open(shot) as im:
        assert im.size == (1400, 4000)
        px = np.asarray(im.convert("RGB"), dtype=np.int16)
    # a rendered page with tables and plots: many distinct colours and non-white content
    colours = np.unique(px.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 200
    assert (px.sum(axis=2) < 600).mean() > 0.02
