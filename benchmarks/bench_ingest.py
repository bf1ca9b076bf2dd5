"""Ingest speed: MovieLens 100K with posters (target: a few seconds, <= 5 s end to end on
2 CPU cores) and Amazon Baby 5-core, with the MovieLens time broken down by stage.

Run: ``python -m benchmarks.bench_ingest`` (reads BEFA_DATASETS_ROOT, default ../shared/datasets).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

TARGET_MOVIELENS_S = 5.0
REPEATS = 3


def _time(fn, repeats: int = REPEATS) -> tuple[float, float, object]:
    """Median wall and CPU (this process) seconds. CPU time shows the cost when other
    jobs share the cores (wall then grows with the load average, CPU does not)."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def main() -> None:
    from pipeline.data.datasets import get_spec, verify_dataset
    from pipeline.data.importers.images import check_images
    from pipeline.data.ingest import ingest
    from pipeline.settings import get_settings

    root = Path(os.environ.get("BEFA_DATASETS_ROOT") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
    ml = root / get_spec("movielens-100k-posters").folder
    with tempfile.TemporaryDirectory() as home:
        settings = get_settings(datasets_root=root, home=home, feature_store=str(Path(home) / "features"))
        t_verify, c_verify, n_files = _time(lambda: verify_dataset("movielens-100k-posters", ml))
        refs = [f"posters/{p.name}" for p in sorted((ml / "posters").iterdir())]
        t_images, c_images, checks = _time(lambda: check_images(refs, ml))
        t_ml, c_ml, (catalog, _) = _time(lambda: ingest("movielens-100k-posters", settings))
        t_amz, c_amz, (amz, _) = _time(lambda: ingest("amazon-baby-5core", settings))

    load = os.getloadavg()[0]
    print(f"movielens-100k-posters ingest (median of {REPEATS}; {os.cpu_count()} CPUs, load average {load:.1f})")
    print(f"  {'stage':24s} {'wall s':>7s} {'cpu s':>7s}")
    print(f"  {'verify SHA256SUMS':24s} {t_verify:7.2f} {c_verify:7.2f}   {n_files} files")
    print(f"  {'image read+hash+decode':24s} {t_images:7.2f} {c_images:7.2f}   {len(checks)} posters")
    print(
        f"  {'ingest end to end':24s} {t_ml:7.2f} {c_ml:7.2f}   target <= {TARGET_MOVIELENS_S:.0f} s wall: "
        f"ratio {t_ml / TARGET_MOVIELENS_S:.2f} {'OK' if t_ml <= TARGET_MOVIELENS_S else 'OVER TARGET'}"
        f"{' (machine busy: compare cpu s)' if load > (os.cpu_count() or 1) else ''}"
    )
    print(f"  -> {catalog.num_items} items, {len(catalog.interactions):,} interactions")
    print(
        f"amazon-baby-5core ingest  {t_amz:7.2f} {c_amz:7.2f}   "
        f"-> {amz.num_items} items, {len(amz.interactions):,} interactions"
    )


if __name__ == "__main__":
    main()
