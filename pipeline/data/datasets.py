"""Known datasets: where they live under the datasets root, where they come from, and
how to check a local copy.

Each known dataset is a folder under ``settings.datasets_root`` (env ``BEFA_DATASETS_ROOT``)
holding the upstream files unchanged plus a ``SHA256SUMS`` file. befa pins the expected
checksums in ``pipeline/checksums/<name>.sha256`` (hashes only: the data themselves may not
be redistributed, see each dataset's licence), so a copy is verified against befa's pinned
list, and a copy whose own ``SHA256SUMS`` disagrees with it is refused.

``download(name, dest)`` fetches the files from the public upstreams listed in the
dataset's PROVENANCE (GroupLens, GitHub), verifies each against the pinned checksums,
and lays them out as the importer expects. It resumes: files already present with the
right checksum are not fetched again. ``url_map`` rewrites URL prefixes, for a mirror or
a test server (``{"https://github.com": "http://127.0.0.1:8000/github"}``).
"""

from __future__ import annotations

import fnmatch
import io
import logging
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.catalog import CatalogError
from storage.atomic import write_bytes, write_text
from storage.keys import sha256_bytes, sha256_file

log = logging.getLogger(__name__)

CHECKSUMS_DIR = Path(__file__).with_name("checksums")
SUMS_NAME = "SHA256SUMS"


@dataclass(frozen=True)
class Upstream:
    """Where the files matching ``pattern`` (fnmatch on the relative path) come from.

    ``urls``: URL templates tried in order, ``{path}`` = the file's relative path.
    ``archive``: a zip URL instead; the file is the member ``member.format(path=...)``.
    """

    pattern: str
    urls: tuple[str, ...] = ()
    archive: str | None = None
    member: str = "{path}"

    def matches(self, relpath: str) -> bool:
        return fnmatch.fnmatchcase(relpath, self.pattern)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # sub-folder of the datasets root
    importer: str  # key in pipeline.data.importers.IMPORTERS
    description: str
    licence: str
    upstreams: tuple[Upstream, ...]

    @property
    def checksums_file(self) -> Path:
        return CHECKSUMS_DIR / f"{self.name}.sha256"

    @property
    def upstream_urls(self) -> list[str]:
        """The primary upstream of each file group (pinned commits), for listings."""
        out: list[str] = []
        for up in self.upstreams:
            url = up.archive or (up.urls[0].replace("{path}", up.pattern) if up.urls else "")
            if url and url not in out:
                out.append(url)
        return out


_AMITKAPS = "https://github.com/amitkaps/recommendation/raw/{ref}/MovieLens"
_MMHCL = (
    "https://github.com/sunflower82/Neighbor-Layer-Hypergraph-CL-for-MMHCL-ready-for-implementation/raw/{ref}/data/baby"
)


def _refs(template: str, sub: str, refs: tuple[str, ...]) -> tuple[str, ...]:
    # The pinned commit first; the default branch as a fallback (checksums decide anyway).
    return tuple(template.format(ref=r) + sub for r in refs)


DATASETS: dict[str, DatasetSpec] = {
    "movielens-100k-posters": DatasetSpec(
        name="movielens-100k-posters",
        folder="movielens-100k-posters",
        importer="movielens-100k-posters",
        description="MovieLens 100K ratings + TMDB plot overviews (items.csv) + 1,663 poster thumbnails",
        licence=(
            "MovieLens 100K: research use, cite Harper & Konstan (2015), no redistribution without "
            "GroupLens' permission (ml-100k/README). Overviews and posters are TMDB content."
        ),
        upstreams=(
            Upstream("ml-100k/*", archive="https://files.grouplens.org/datasets/movielens/ml-100k.zip"),
            Upstream("ml-100k/*", urls=_refs(_AMITKAPS, "/{path}", ("7f7ecbd", "HEAD"))),
            Upstream("items.csv", urls=_refs(_AMITKAPS, "/data/{path}", ("7f7ecbd", "HEAD"))),
            Upstream("posters/*", urls=_refs(_AMITKAPS, "/data/{path}", ("7f7ecbd", "HEAD"))),
        ),
    ),
    "amazon-baby-5core": DatasetSpec(
        name="amazon-baby-5core",
        folder="amazon-baby-5core",
        importer="amazon-baby-5core",
        description="Amazon Baby 5-core interaction graph (19,445 users, 7,050 items, 160,792 interactions), "
        "no content",
        licence="Amazon review data (McAuley et al.), research use.",
        upstreams=(
            Upstream("*2id.json", urls=_refs(_MMHCL, "/{path}", ("a553f39", "HEAD"))),
            # The split files sit in data/baby/5-core/ in the repository's recent history.
            Upstream(
                "*.json",
                urls=_refs(_MMHCL, "/5-core/{path}", ("a553f39", "HEAD"))
                + _refs(_MMHCL, "/{path}", ("a553f39", "HEAD")),
            ),
        ),
    ),
}


KNOWN_DATASETS = DATASETS


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None


# -- checksums ---------------------------------------------------------------------


def read_sums(path: str | Path) -> dict[str, str]:
    """Parse a ``sha256sum`` file: relative path (without ``./``) -> hex digest."""
    path = Path(path)
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise CatalogError(path, f"not a sha256sum line: {line[:80]!r}", n)
        rel = parts[1].lstrip("*").strip()
        out[rel[2:] if rel.startswith("./") else rel] = parts[0].lower()
    return out


def pinned_sums(name: str) -> dict[str, str]:
    return read_sums(get_spec(name).checksums_file)


def verify_files(folder: str | Path, expected: dict[str, str], hint: str = "") -> int:
    """Check every listed file; raise naming the first missing or changed file (and how
    many others fail). Returns the number of files checked."""
    folder = Path(folder)
    failures: list[tuple[Path, str]] = []
    for rel, digest in expected.items():
        path = folder / rel
        if not path.is_file():
            failures.append((path, f"missing file (listed in {SUMS_NAME}){hint}"))
            continue
        try:
            got = sha256_file(path)
        except OSError as exc:
            failures.append((path, f"unreadable file: {exc}"))
            continue
        if got != digest:
            failures.append((path, f"sha256 mismatch: expected {digest}, got {got} (file changed or corrupt){hint}"))
    if failures:
        path, problem = failures[0]
        if len(failures) > 1:
            others = ", ".join(str(p.relative_to(folder)) for p, _ in failures[1:6])
            problem += f"; {len(failures) - 1} more file(s) fail: {others}{' ...' if len(failures) > 6 else ''}"
        raise CatalogError(path, problem)
    return len(expected)


def verify_dataset(name: str, folder: str | Path) -> int:
    """Verify a local copy of a known dataset against befa's pinned checksums (and check
    that the copy's own SHA256SUMS, when present, agrees with them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CatalogError(folder, f"dataset folder missing; run `befa download {name}` or set BEFA_DATASETS_ROOT")
    expected = pinned_sums(name)
    own = folder / SUMS_NAME
    if own.exists() and read_sums(own) != expected:
        theirs = read_sums(own)
        diff = sorted(k for k in set(theirs) | set(expected) if theirs.get(k) != expected.get(k))
        raise CatalogError(
            own, f"differs from the checksums pinned in befa for {name} ({len(diff)} entries, e.g. {diff[:3]})"
        )
    return verify_files(folder, expected, hint=f"; run `befa download {name}` to repair")


def local_status(name: str, datasets_root: str | Path) -> str:
    """One line for listings: is a verified copy under the datasets root?"""
    folder = Path(datasets_root) / get_spec(name).folder
    if not folder.is_dir():
        return "absent"
    try:
        n = verify_dataset(name, folder)
    except CatalogError as exc:
        return f"present, NOT verified: {exc}"
    return f"present, {n} files verified"


# -- download ----------------------------------------------------------------------


class DownloadError(RuntimeError):
    pass


def _map_url(url: str, url_map: dict[str, str] | None) -> str:
    for prefix, repl in (url_map or {}).items():
        if url.startswith(prefix):
            return repl + url[len(prefix) :]
    return url


def _fetch(url: str, timeout: float, retries: int = 3) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "befa-dataset-download"})
    for attempt in range(retries):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == retries - 1:  # 404 and the like will not improve
                raise
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            if attempt == retries - 1:
                raise
        time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


class _Fetch:
    """One download: which files are still missing, the errors per file, checked writes."""

    def __init__(self, folder: Path, expected: dict[str, str], url_map: dict[str, str] | None, timeout: float):
        self.folder, self.expected, self.url_map, self.timeout = folder, expected, url_map, timeout
        self.missing = [rel for rel in expected if not self.present(rel)]
        self.errors: dict[str, list[str]] = {rel: [] for rel in self.missing}

    def present(self, rel: str) -> bool:
        p = self.folder / rel
        return p.is_file() and sha256_file(p) == self.expected[rel]

    def accept(self, rel: str, data: bytes, url: str) -> bool:
        got = sha256_bytes(data)
        if got != self.expected[rel]:
            self.errors[rel].append(f"{url}: sha256 {got} != expected {self.expected[rel]}")
            return False
        write_bytes(self.folder / rel, data)
        return True

    def from_archive(self, up: Upstream, todo: list[str]) -> None:
        url = _map_url(up.archive, self.url_map)
        try:
            archive = zipfile.ZipFile(io.BytesIO(_fetch(url, self.timeout)))
        except Exception as exc:
            for rel in todo:
                self.errors[rel].append(f"{url}: {exc}")
            return
        names = set(archive.namelist())
        for rel in todo:
            member = up.member.format(path=rel)
            if member not in names:
                self.errors[rel].append(f"{url}: no member {member}")
                continue
            self.accept(rel, archive.read(member), f"{url}#{member}")

    def from_urls(self, up: Upstream, todo: list[str], workers: int) -> None:
        def one(rel: str) -> None:
            for template in up.urls:
                url = _map_url(template.format(path=rel), self.url_map)
                try:
                    data = _fetch(url, self.timeout)
                except Exception as exc:
                    self.errors[rel].append(f"{url}: {exc}")
                    continue
                if self.accept(rel, data, url):
                    return

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(one, todo))


def download(
    name: str,
    dest: str | Path,
    *,
    url_map: dict[str, str] | None = None,
    workers: int = 8,
    timeout: float = 60.0,
) -> Path:
    """Fetch dataset ``name`` into ``dest/<folder>`` (``dest``: the datasets root), verify
    every file, write ``SHA256SUMS`` and ``PROVENANCE.md``; returns the dataset folder.
    Raises :class:`DownloadError` naming each file that no upstream could supply with the
    right checksum."""
    spec = get_spec(name)
    folder = Path(dest) / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    fetch = _Fetch(folder, pinned_sums(name), url_map, timeout)
    log.info("%s: %d of %d files to fetch", name, len(fetch.missing), len(fetch.expected))
    for up in spec.upstreams:
        todo = [rel for rel in fetch.missing if up.matches(rel) and not fetch.present(rel)]
        if todo and up.archive:
            fetch.from_archive(up, todo)
        elif todo:
            fetch.from_urls(up, todo, workers)
    failed = [rel for rel in fetch.missing if not fetch.present(rel)]
    if failed:
        lines = [
            f"{folder / rel}: " + ("; ".join(fetch.errors[rel][:6]) or "no upstream serves it") for rel in failed[:10]
        ]
        more = f"\n... and {len(failed) - 10} more" if len(failed) > 10 else ""
        raise DownloadError(
            f"{name}: {len(failed)} file(s) could not be fetched and verified:\n" + "\n".join(lines) + more
        )
    _write_provenance(spec, folder)
    verify_dataset(name, folder)
    return folder


def _write_provenance(spec: DatasetSpec, folder: Path) -> None:
    write_text(folder / SUMS_NAME, spec.checksums_file.read_text(encoding="utf-8"))
    sources = "\n".join(f"- `{u.pattern}`: " + (u.archive if u.archive else ", ".join(u.urls)) for u in spec.upstreams)
    write_text(
        folder / "PROVENANCE.md",
        f"# {spec.name}\n\n{spec.description}\n\nFetched by `befa download` from:\n\n{sources}\n\n"
        f"Every file verified against befa's pinned checksums ({SUMS_NAME}).\n\nLicence: {spec.licence}\n",
    )
