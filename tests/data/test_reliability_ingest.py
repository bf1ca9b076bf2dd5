"""Bad input caught at ingest, before any work (issue 14, items 1, 4, 5, 8, 12).

Each bad-input case checks the exact message (file, row, problem, flag) and that the state
under ``BEFA_HOME`` is byte-identical afterwards; each skip-and-report case checks that the
good rows are in and the bad ones are in the report. Image URLs: plain ingest reads them
from the image cache only (a local HTTP server on 127.0.0.1 counts every request), and a
no-network guard runs ingest, extract, train and the pipeline in a subprocess under an
audit hook that fails any non-loopback connect.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import pipeline.data.importers.generic as generic_module
import pipeline.features.extract as extract_module
from pipeline.cli.main import app
from pipeline.data.catalog import Catalog, CatalogError, build_catalog
from pipeline.data.ingest import ingest
from pipeline.data.versions import files_dir
from pipeline.features.extract import extract_features
from pipeline.settings import get_settings
from storage.feature_store import FeatureStore
from tests.data.test_catalog_versions import tree_hashes
from tests.data.test_fetch_images import Server

REPO = Path(__file__).resolve().parents[2]
TINY_ENCODER = "imagebind:tiny@random"


def jpeg(k: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (30 * k % 256, 60, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def write_catalog(
    root: Path, images: list[str | None] | None = None, items: dict | None = None, events: list[tuple] | None = None
) -> dict[str, Path]:
    """items.csv (with an image column when ``images`` is given; local names get real JPEGs)
    and events.csv; ``events`` rows are (user_id, item_id, timestamp) strings."""
    root.mkdir(parents=True, exist_ok=True)
    n = len(images) if images is not None else 4
    frame = {"item_id": [f"i{k}" for k in range(n)], "title": [f"item {k}" for k in range(n)], **(items or {})}
    if images is not None:
        frame["image"] = images
        for k, ref in enumerate(images):
            if ref and "://" not in ref and not os.path.isabs(ref) and not ref.startswith(".."):
                (root / ref).write_bytes(jpeg(k))
    pd.DataFrame(frame).to_csv(root / "items.csv", index=False)
    if events is None:
        events = [(f"u{u}", f"i{(u + j) % n}", str(1_700_000_000 + 10 * u + j)) for u in range(4) for j in range(3)]
    pd.DataFrame(events, columns=["user_id", "item_id", "timestamp"]).to_csv(root / "events.csv", index=False)
    return {"items": root / "items.csv", "interactions": root / "events.csv"}


@pytest.fixture
def settings(tmp_path):
    s = get_settings(
        home=tmp_path / "home", datasets_root=tmp_path / "datasets", feature_store=str(tmp_path / "home" / "features")
    )
    s.home.mkdir(parents=True)
    (s.home / "marker.txt").write_text("state before")  # a home that already holds something
    return s


def assert_refused(settings, paths: dict, expected: str, **options) -> None:
    """The ingest fails with exactly ``expected`` and leaves BEFA_HOME byte-identical."""
    before = tree_hashes(settings.home)
    with pytest.raises(CatalogError) as err:
        ingest("generic", settings, name="shop", **paths, **options)
    assert str(err.value) == expected
    assert tree_hashes(settings.home) == before


# -- 4: ids must be printable ------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, shown, code",
    [
        ("i\x01x", "'i\\x01x'", "U+0001, a control character"),
        ("a\tb", "'a\\tb'", "U+0009, a control character"),
        ("i\u200bz", "'i\\u200bz'", "U+200B, ZERO WIDTH SPACE"),
        ("x\x7f", "'x\\x7f'", "U+007F, a control character"),
    ],
)
def test_a_non_printable_item_id_is_refused_with_file_and_row(tmp_path, settings, bad, shown, code):
    paths = write_catalog(tmp_path / "src")
    items = pd.read_csv(paths["items"], dtype=str)
    items.loc[2, "item_id"] = bad
    items.to_csv(paths["items"], index=False)
    assert_refused(
        settings,
        paths,
        f"{paths['items']}, data row 3 (line 4): item_id {shown} holds a non-printable character "
        f"({code}); ids must be printable text: fix the file",
    )


def test_a_control_character_in_a_user_id_is_refused(tmp_path, settings):
    paths = write_catalog(tmp_path / "src", events=[("u1", "i0", "1"), ("u\x1b[31m", "i1", "2")])
    assert_refused(
        settings,
        paths,
        f"{paths['interactions']}, data row 2 (line 3): user_id 'u\\x1b[31m' holds a non-printable "
        "character (U+001B, a control character); ids must be printable text: fix the file",
    )


def test_extraction_checks_ids_before_any_encoder_loads(monkeypatch):
    """A catalog with a bad id (built in memory, as an old catalog may hold one) fails at once."""
    items = pd.DataFrame({"item_id": ["ok", "b\x00d"], "title": ["a", "b"], "text": ["a", "b"]})
    catalog = build_catalog(
        "old", items, pd.DataFrame({"user_id": ["u"], "item_id": ["ok"], "rating": [1.0], "timestamp": [0]})
    )

    def no_encoding(*args, **kwargs):
        raise AssertionError("an encoder was loaded before the ids were checked")

    monkeypatch.setattr(extract_module, "encoders_to_run", no_encoding)
    with pytest.raises(ValueError) as err:
        extract_features(catalog, TINY_ENCODER, FeatureStore("memory://befa-bad-ids"))
    assert str(err.value) == (
        "catalog old: item_id: row 1 ('b\\x00d') is empty or holds control characters; "
        "fix the id and re-run `befa ingest`"
    )


# -- 5: timestamps and dates -------------------------------------------------------------------
def _events(stamp: str) -> list[tuple]:
    return [("u1", "i0", "1700000000"), ("u1", "i1", "1700000100"), ("u2", "i2", stamp)]


RANGE = "unix seconds must lie between 0 (1970-01-01) and 253402300799 (9999-12-31)"


@pytest.mark.parametrize(
    "stamp, problem",
    [
        ("1e30", f"timestamp '1e30' is out of range: {RANGE}"),
        ("-5", f"timestamp '-5' is out of range: {RANGE}"),
        (
            "1700000000000",
            f"timestamp '1700000000000' is out of range: {RANGE} (it looks like milliseconds: divide by 1000)",
        ),
        ("NaN", "timestamp 'NaN' is not a time (unix seconds or a date)"),
        ("inf", "timestamp 'inf' is not a time (unix seconds or a date)"),
        ("1969-12-31", "timestamp '1969-12-31' is before 1970-01-01: out of range for unix seconds"),
        (
            "05/01/2024",
            "timestamp '05/01/2024' is neither unix seconds nor an ISO 8601 date (2024-05-01, 2024-05-01T10:00:00Z); "
            "for another date form name its strptime format with --date-format (e.g. --date-format '%d/%m/%Y'): "
            "befa never guesses day and month order",
        ),
    ],
)
def test_a_bad_timestamp_is_refused_with_file_and_row(tmp_path, settings, stamp, problem):
    paths = write_catalog(tmp_path / "src", events=_events(stamp))
    assert_refused(settings, paths, f"{paths['interactions']}, data row 3 (line 4): {problem}")


def test_bad_interaction_values_fail_before_any_image_is_read(tmp_path, settings, monkeypatch):
    paths = write_catalog(tmp_path / "src", images=["i0.jpg", "i1.jpg", "i2.jpg"], events=_events("1e30"))

    def no_images(*args, **kwargs):
        raise AssertionError("images were read before the interaction table was checked")

    monkeypatch.setattr(generic_module, "attach_images", no_images)
    assert_refused(
        settings, paths, f"{paths['interactions']}, data row 3 (line 4): timestamp '1e30' is out of range: {RANGE}"
    )


def test_dates_iso_8601_or_the_named_format(tmp_path, settings):
    paths = write_catalog(tmp_path / "src", events=_events("2024-05-01T10:00:00Z") + [("u3", "i3", "2024-05-02")])
    catalog, _ = ingest("generic", settings, name="iso", **paths)
    assert catalog.interactions["timestamp"].tolist()[-2:] == [1714557600, 1714608000]

    paths = write_catalog(tmp_path / "eu", events=_events("05/01/2024"))
    catalog, _ = ingest("generic", settings, name="eu", date_format="%d/%m/%Y", **paths)
    assert catalog.interactions["timestamp"].iloc[-1] == 1704412800  # 5 January 2024, as the format says
    assert catalog.meta["ingest"]["options"]["date_format"] == "%d/%m/%Y"  # a re-ingest reads the same way
    assert_refused(
        settings,
        write_catalog(tmp_path / "us", events=_events("12/31/2024")),
        f"{tmp_path / 'us' / 'events.csv'}, data row 3 (line 4): timestamp '12/31/2024' is neither unix seconds "
        "nor a date in --date-format '%d/%m/%Y'",
        date_format="%d/%m/%Y",
    )

    before = tree_hashes(settings.home)
    with pytest.raises(ValueError) as err:  # a format that is not one fails before any file is read
        ingest("generic", settings, name="eu", date_format="%Q", **paths)
    assert str(err.value) == (
        "befa ingest generic: --date-format: '%Q' is not a strptime format ('Q' is a bad directive in "
        "format '%Q'); e.g. '%d/%m/%Y' or '%m/%d/%Y %H:%M'"
    )
    assert tree_hashes(settings.home) == before


# -- 8: where a problem is ---------------------------------------------------------------------
def test_a_non_utf8_byte_is_located_by_row_line_and_offset(tmp_path, settings):
    paths = write_catalog(tmp_path / "src")
    raw = paths["items"].read_bytes().split(b"\n")
    raw[2] = raw[2].replace(b"item 1", b"caf\xe9 1")  # data row 2 (line 3), latin-1
    paths["items"].write_bytes(b"\n".join(raw))
    column = raw[2].index(b"\xe9")
    offset = len(raw[0]) + len(raw[1]) + 2 + column
    assert_refused(
        settings,
        paths,
        f"{paths['items']}: item table is not UTF-8 text: byte 0xe9 at byte offset {offset} "
        f"(data row 2 (line 3), byte {column + 1} of the line) is not valid UTF-8 (invalid "
        "continuation byte); save it as UTF-8",
    )


def test_a_text_file_named_jpg_is_not_an_image_and_says_so(tmp_path, settings):
    paths = write_catalog(tmp_path / "src", images=["i0.jpg", "i1.jpg", "i2.jpg", "i3.jpg", "i4.jpg", "i5.jpg"])
    (tmp_path / "src" / "i4.jpg").write_text("this is a shopping list, not a photo\n")
    catalog, report = ingest("generic", settings, name="shop", **paths)
    rejects = pq.read_table(files_dir(settings.catalog_dir("shop")) / "rejects.parquet").to_pandas()
    assert rejects[["item_id", "file", "row", "problem"]].values.tolist() == [
        ["i4", str(paths["items"]), 5, "not an image (PIL cannot identify it)"]
    ]
    (issue,) = [i for i in report.issues if i["item_id"] == "i4"]
    assert (
        issue["row"] == 5
        and issue["image"] == str(tmp_path / "src" / "i4.jpg")
        and "BytesIO" not in json.dumps(report.to_dict())
    )
    assert catalog.items["image_hash"].notna().tolist() == [True, True, True, True, False, True]  # the good rows are in


# -- 12: references outside the images folder --------------------------------------------------
def test_references_outside_the_images_folder_are_listed_and_refused_with_images_only(tmp_path, settings):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.jpg").write_bytes(jpeg(7))
    paths = write_catalog(
        tmp_path / "src" / "shop", images=["i0.jpg", "../../elsewhere/x.jpg", "i2.jpg", str(elsewhere / "x.jpg")]
    )
    catalog, report = ingest("generic", settings, name="shop", **paths)
    assert catalog.items["image_hash"].notna().all()  # absolute paths keep working, as documented
    assert report.counts_out["images_outside_images_folder"] == 2
    base = tmp_path / "src" / "shop"
    assert (
        f"2 image reference(s) lie outside the images folder {base} "
        "(e.g. '../../elsewhere/x.jpg' (data row 2 (line 3)), "
        f"'{elsewhere / 'x.jpg'}' (data row 4 (line 5))); --images-only refuses them"
    ) in report.warnings

    assert_refused(
        settings,
        paths,
        f"{paths['items']}, data row 2 (line 3): 2 image reference(s) lie outside the images folder "
        f"{base}: '../../elsewhere/x.jpg' (data row 2 (line 3)), '{elsewhere / 'x.jpg'}' (data row 4 (line 5)); "
        "--images-only refuses them (move the images under --images, or leave out --images-only)",
        images_only=True,
    )


# -- 1: image URLs: from the cache only; --fetch-images downloads them first ----------------------
@pytest.fixture()
def server():
    s = Server()
    yield s
    s.close()


def test_image_urls_are_not_downloaded_by_ingest_and_fetch_images_brings_them_in(tmp_path, settings, server):
    urls = [f"{server.url}/good/red.jpg", f"{server.url}/good/blue.jpg", f"{server.url}/missing.jpg"]
    paths = write_catalog(tmp_path / "src", images=["i0.jpg", urls[0], urls[1], urls[2]])
    catalog, report = ingest("generic", settings, name="shop", allow_missing_images=True, **paths)
    assert server.hits == {}  # plain ingest never touches the network
    rejects = pq.read_table(files_dir(settings.catalog_dir("shop")) / "rejects.parquet").to_pandas()
    assert rejects["row"].tolist() == [2, 3, 4] and set(rejects["file"]) == {str(paths["items"])}
    assert rejects["problem"].tolist() == [
        f"image URL not downloaded ({u}); run `befa fetch-images CATALOG` (or ingest with --fetch-images)" for u in urls
    ]
    assert "3 image URL not downloaded" in " ".join(report.warnings) and "image file missing" not in json.dumps(
        report.to_dict()
    )

    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "generic",
            "--as",
            "shop",
            "--items",
            str(paths["items"]),
            "--interactions",
            str(paths["interactions"]),
            "--fetch-images",
            "--allow-missing-images",
        ],
        env={"BEFA_HOME": str(settings.home)},
    )
    assert result.exit_code == 0, result.output
    assert server.hits == {"/good/red.jpg": 1, "/good/blue.jpg": 1, "/missing.jpg": 1}
    assert "--fetch-images: 3 image URLs: 0 already cached, 2 downloaded" in " ".join(result.output.split())
    from_cli = json.loads((files_dir(settings.catalog_dir("shop")) / "catalog.json").read_text())
    assert from_cli["ingest"]["options"]["fetch_images"] is True and "image_cache" not in from_cli["ingest"]["options"]
    rejects = pq.read_table(files_dir(settings.catalog_dir("shop")) / "rejects.parquet").to_pandas()
    assert rejects["row"].tolist() == [4]  # only the 404 is left, still with its row

    # extraction reads the two URLs from the cache: no request reaches the server
    loaded = Catalog.load(settings.catalog_dir("shop"))
    assert loaded.items["image_hash"].notna().tolist() == [True, True, True, False]
    summary = extract_features(
        loaded, TINY_ENCODER, FeatureStore(settings.feature_store), modalities=["image"], progress=False, num_workers=0
    )
    assert summary.modalities["image"].encoded == 3 and summary.modalities["image"].failed == 0
    assert sum(server.hits.values()) == 3


# -- no network: ingest, extract, train and the pipeline under a connect guard ---------------------
GUARD = textwrap.dedent(
    r"""
    import ipaddress, json, socket, sys

    blocked = []

    def local(host):
        host = host.decode() if isinstance(host, bytes) else str(host)
        if host in ("localhost", ""):
            return True
        try:
            return ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            return False

    def literal(host):
        try:
            ipaddress.ip_address((host.decode() if isinstance(host, bytes) else str(host)).split("%")[0])
            return True
        except ValueError:
            return False

    def guard(event, args):
        if event == "socket.connect" and isinstance(args[1], tuple) and not local(args[1][0]):
            blocked.append(f"connect {args[1]!r}")
            raise ConnectionRefusedError(f"no-network guard: connect to {args[1]!r}")
        if event == "socket.getaddrinfo" and args[0] is not None and not local(args[0]) and not literal(args[0]):
            blocked.append(f"getaddrinfo {args[0]!r}")
            raise OSError(f"no-network guard: name lookup of {args[0]!r}")

    sys.addaudithook(guard)  # cannot be removed: this whole process is guarded
    probe = socket.socket()
    try:
        probe.connect(("192.0.2.1", 80))
    except ConnectionRefusedError:
        pass
    finally:
        probe.close()
    try:
        socket.getaddrinfo("example.com", 80)
    except OSError:
        pass
    assert blocked == ["connect ('192.0.2.1', 80)", "getaddrinfo 'example.com'"], blocked  # the guard is live
    blocked.clear()

    from pathlib import Path
    from pipeline.data.catalog import Catalog
    from pipeline.data.ingest import ingest
    from pipeline.data.splits import split_random
    from pipeline.features.extract import extract_features
    from pipeline.job.params import PipelineParams
    from pipeline.job.run import run_pipeline
    from pipeline.settings import get_settings
    from pipeline.training.api import train_model
    from storage.feature_store import FeatureStore

    args = json.loads(sys.argv[1])
    settings = get_settings(home=args["home"], datasets_root=args["home"])
    options = dict(items=args["items"], interactions=args["interactions"], allow_missing_images=True)
    catalog, report = ingest("generic", settings, name="nonet", **options)
    summary = extract_features(catalog, args["encoder"], FeatureStore(settings.feature_store), progress=False)
    split = split_random(catalog, seed=1)
    split_path = split.save(catalog.splits_dir)
    run = train_model(settings.catalog_dir("nonet"), split_path, None, "lightgcn", overrides={"embedding_dim": 8},
                      run_dir=Path(args["home"]) / "runs" / "lgcn", max_epochs=1, quiet=True)
    params = PipelineParams(dataset="nonet2", importer="generic", ingest_options=options, encoder=args["encoder"],
                            models=["lightgcn"], adapters=["none"], epochs=1, patience=1, seed=1,
                            model_overrides={"*": {"embedding_dim": 8}}, run_name="nonet", verify_checkpoints=False)
    result = run_pipeline(params, settings)
    print(json.dumps({
        "blocked": blocked,
        "not_downloaded": sorted(i["image"] for i in report.issues if "image URL not downloaded" in i["problem"]),
        "encoded": {m: s.encoded for m, s in summary.modalities.items()},
        "trained": len(run.record.epochs),
        "pipeline_runs": [(r.model, r.adapter) for r in result.runs],
    }))
    """
)


def test_no_network_ingest_extract_train_and_pipeline(tmp_path):
    n = 10
    images = [f"i{k}.jpg" for k in range(n - 2)] + ["http://images.example.com/a.jpg", "https://cdn.example.org/b.jpg"]
    events = [(f"u{u}", f"i{(u * 3 + j) % n}", str(1_700_000_000 + 10 * u + j)) for u in range(12) for j in range(5)]
    paths = write_catalog(tmp_path / "src", images=images, events=events)
    args = {
        "home": str(tmp_path / "home"),
        "items": str(paths["items"]),
        "interactions": str(paths["interactions"]),
        "encoder": TINY_ENCODER,
    }
    env = dict(os.environ, HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    proc = subprocess.run(
        [sys.executable, "-c", GUARD, json.dumps(args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["blocked"] == []  # nothing tried to reach a non-loopback address
    assert out["not_downloaded"] == sorted(images[-2:])  # the two URLs: reported, not fetched
    assert out["encoded"]["image"] == n - 2 and out["encoded"]["text"] == n
    assert out["trained"] == 1 and ["lightgcn", "none"] in out["pipeline_runs"]
