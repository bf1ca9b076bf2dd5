"""Known datasets: checksum verification and download (against a loopback HTTP server and
file:// URLs laid out like the real upstreams, serving the local copy of the files)."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from pipeline.data.catalog import CatalogError
from pipeline.data.datasets import (
    DATASETS,
    DownloadError,
    download,
    local_status,
    pinned_sums,
    read_sums,
    verify_dataset,
)
from pipeline.data.ingest import ingest
from pipeline.settings import get_settings

AMITKAPS = "github/amitkaps/recommendation/raw/7f7ecbd/MovieLens"
MMHCL = "github/sunflower82/Neighbor-Layer-Hypergraph-CL-for-MMHCL-ready-for-implementation/raw/a553f39/data/baby"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield www, {"https://files.grouplens.org": f"{base}/grouplens", "https://github.com": f"{base}/github"}
    httpd.shutdown()
    httpd.server_close()


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def serve_amazon(www: Path, src: Path) -> None:
    for name in ("user2id.json", "item2id.json"):
        _link(src / name, www / MMHCL / name)
    for name in ("train.json", "val.json", "test.json"):
        _link(src / name, www / MMHCL / "5-core" / name)


def test_pinned_checksums_match_the_dataset_copies(datasets_root):
    for name, spec in DATASETS.items():
        assert read_sums(datasets_root / spec.folder / "SHA256SUMS") == pinned_sums(name)
    assert len(pinned_sums("movielens-100k-posters")) == 7 + 1 + 1663


def test_verify_real_copies(datasets_root):
    assert verify_dataset("amazon-baby-5core", datasets_root / "amazon-baby-5core") == 5
    assert local_status("movielens-100k-posters", datasets_root) == "present, 1671 files verified"
    assert local_status("amazon-baby-5core", datasets_root / "nowhere") == "absent"


def test_tampered_file_is_detected(tmp_path, datasets_root):
    root = tmp_path / "datasets"
    copy = shutil.copytree(datasets_root / "amazon-baby-5core", root / "amazon-baby-5core")
    val = copy / "val.json"
    val.chmod(0o644)
    val.write_bytes(val.read_bytes() + b"\n")  # still valid JSON, different bytes
    with pytest.raises(CatalogError, match=r"amazon-baby-5core/val\.json: sha256 mismatch: expected 30858bf9") as err:
        verify_dataset("amazon-baby-5core", copy)
    assert err.value.file == str(val)
    settings = get_settings(datasets_root=root, home=tmp_path / "home")
    with pytest.raises(CatalogError, match=r"val\.json: sha256 mismatch"):
        ingest("amazon-baby-5core", settings)
    # verify=False skips the check (for a deliberately edited copy)
    catalog, _ = ingest("amazon-baby-5core", settings, verify=False)
    assert catalog.num_items == 7050


def test_missing_file_and_changed_sums(tmp_path, datasets_root):
    copy = shutil.copytree(datasets_root / "amazon-baby-5core", tmp_path / "amazon-baby-5core")
    (copy / "test.json").unlink()
    with pytest.raises(CatalogError, match=r"test\.json: missing file \(listed in SHA256SUMS\)"):
        verify_dataset("amazon-baby-5core", copy)
    sums = copy / "SHA256SUMS"
    sums.chmod(0o644)
    sums.write_text(sums.read_text().replace("84150e1a", "00000000"))
    with pytest.raises(CatalogError, match=r"SHA256SUMS: differs from the checksums pinned in befa"):
        verify_dataset("amazon-baby-5core", copy)


def test_tampered_poster_is_detected_by_ingest(tmp_path, datasets_root):
    root = tmp_path / "datasets"
    copy = shutil.copytree(datasets_root / "movielens-100k-posters", root / "movielens-100k-posters")
    poster = copy / "posters" / "50.jpg"
    poster.chmod(0o644)
    poster.write_bytes(poster.read_bytes()[:-10])
    settings = get_settings(datasets_root=root, home=tmp_path / "home")
    with pytest.raises(CatalogError, match=r"posters/50\.jpg: sha256 mismatch"):
        ingest("movielens-100k-posters", settings)


def test_download_movielens_from_loopback_upstreams(tmp_path, datasets_root, server):
    www, url_map = server
    src = datasets_root / "movielens-100k-posters"
    zip_path = www / "grouplens" / "datasets" / "movielens" / "ml-100k.zip"
    zip_path.parent.mkdir(parents=True)
    with zipfile.ZipFile(zip_path, "w") as zf:  # the real archive has more members than befa needs
        for f in sorted((src / "ml-100k").iterdir()):
            zf.write(f, f"ml-100k/{f.name}")
        zf.writestr("ml-100k/u1.base", "1\t1\t5\t874965758\n")
    _link(src / "items.csv", www / AMITKAPS / "data" / "items.csv")
    _link(src / "posters", www / AMITKAPS / "data" / "posters")

    folder = download("movielens-100k-posters", tmp_path / "root", url_map=url_map)
    assert folder == tmp_path / "root" / "movielens-100k-posters"
    assert len(list((folder / "posters").iterdir())) == 1663
    assert not (folder / "ml-100k" / "u1.base").exists()
    assert read_sums(folder / "SHA256SUMS") == pinned_sums("movielens-100k-posters")
    assert "files.grouplens.org" in (folder / "PROVENANCE.md").read_text()
    # resumes: everything is there, so nothing is fetched (an unreachable upstream is fine)
    assert download("movielens-100k-posters", tmp_path / "root", url_map={"https://": "http://127.0.0.1:9/"}) == folder


def test_download_falls_back_to_the_mirror(tmp_path, datasets_root, server):
    """No zip upstream: ml-100k files come from the GitHub mirror; posters already present."""
    www, url_map = server
    src = datasets_root / "movielens-100k-posters"
    for f in (src / "ml-100k").iterdir():
        _link(f, www / AMITKAPS / "ml-100k" / f.name)
    _link(src / "items.csv", www / AMITKAPS / "data" / "items.csv")
    dest = tmp_path / "root" / "movielens-100k-posters"
    shutil.copytree(src / "posters", dest / "posters")
    folder = download("movielens-100k-posters", tmp_path / "root", url_map=url_map)
    assert verify_dataset("movielens-100k-posters", folder) == 1671


def test_download_rejects_a_tampered_upstream(tmp_path, datasets_root, server):
    www, url_map = server
    src = datasets_root / "amazon-baby-5core"
    serve_amazon(www, src)
    bad = www / MMHCL / "5-core" / "val.json"
    bad.unlink()
    bad.write_text('{"0": [1]}')
    with pytest.raises(DownloadError) as err:
        download("amazon-baby-5core", tmp_path / "root", url_map=url_map)
    msg = str(err.value)
    assert "1 file(s)" in msg and "amazon-baby-5core/val.json" in msg and "sha256" in msg
    assert not (tmp_path / "root" / "amazon-baby-5core" / "val.json").exists()
    assert (tmp_path / "root" / "amazon-baby-5core" / "train.json").exists()  # the good files were kept


def test_download_from_file_urls_then_ingest(tmp_path, datasets_root):
    www = tmp_path / "www"
    serve_amazon(www, datasets_root / "amazon-baby-5core")
    folder = download("amazon-baby-5core", tmp_path / "root", url_map={"https://github.com": (www / "github").as_uri()})
    settings = get_settings(datasets_root=tmp_path / "root", home=tmp_path / "home")
    catalog, report = ingest("amazon-baby-5core", settings)
    assert folder.name == "amazon-baby-5core" and len(catalog.interactions) == 160_792
