import os
from pathlib import Path

import pytest

from pipeline.cpu_threads import bound_omp_spin

bound_omp_spin()  # before any test imports torch: the suite shares its 2 cores with whatever else runs
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    root = Path(os.environ.get("BEFA_DATASETS_ROOT") or REPO.parent / "shared" / "datasets").resolve()
    if not (root / "movielens-100k-posters").exists():
        pytest.fail(f"datasets root {root} lacks movielens-100k-posters; set BEFA_DATASETS_ROOT")
    return root


# What `make test-fast` leaves out (markers in pyproject.toml): by folder or module, and the
# few single tests measured above ~5 s on 2 cores (the full suite's --durations, 2026-12-05).
PREFECT_PATHS = ("tests/flows/",)
RAY_PATHS = (
    "tests/flows/test_ray_client.py",
    "tests/features/test_ray_extract.py",
    "tests/training/test_ray_training.py",
)
SLOW_PATHS = (
    "tests/job/test_crash.py",
    "tests/job/test_fault_injection.py",  # killed CLI processes and a full disk at every write point: ~30 s
    "tests/flows/test_flows_e2e.py",
    "tests/study/test_study.py",  # the whole tiny study, every phase: ~15 s of setup
    "tests/study/test_study_report_browser.py",
)
SLOW_TESTS = (
    "tests/data/test_reliability_ingest.py::test_no_network_ingest_extract_train_and_pipeline",
    "tests/job/test_small_catalogs.py::test_befa_run_trains_the_floor_and_prints_epoch_lines_in_full_width",
    "tests/encoders/test_encoders.py::test_minilm_nearest_neighbours_on_movielens",
    "tests/cli/test_cli_params.py::test_befa_run_movielens_set_befa_t_reaches_the_adapter",
    "tests/job/test_served.py::test_a_retrain_killed_mid_training_is_retriggered",
    "tests/training/test_mapping.py::test_a_cold_split_run_gets_its_mappers_and_befa_map_refits_them",
    "tests/study/test_study_cold.py::test_a_killed_study_resumes_without_retraining_and_reports_cold_items",
    "tests/features/test_backend.py::test_auto_measures_once_records_the_verdict_and_reuses_it",
    "tests/features/test_prefetch.py::test_prefetch_extraction_gives_the_features_of_the_serial_and_dataloader_paths",
)


def _mark_by_place(items) -> None:
    for item in items:
        where = item.nodeid
        if where.startswith(PREFECT_PATHS):
            item.add_marker(pytest.mark.prefect)
        if where.startswith(RAY_PATHS):
            item.add_marker(pytest.mark.ray)
        if where.startswith(SLOW_PATHS) or where.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


def pytest_collection_modifyitems(session, config, items):
    """Mark what `make test-fast` leaves out, then run the Ray training tests before any other Ray test in the process.

    prefect-ray's task futures fail with Ray's ``OwnerDiedError`` when the process already
    started and shut down another local Ray session (``tests/features/test_ray_extract.py`` and
    ``tests/flows/test_ray_client.py`` each start one): seen with prefect-ray 0.6.0 and ray 2.60.
    The first Ray session of a process is unaffected, so the module that drives the
    Prefect flow on Ray goes first; the others start theirs afterwards without trouble.
    """
    _mark_by_place(items)
    first = [item for item in items if item.path.name == "test_ray_training.py"]
    if first:
        rest = [item for item in items if item.path.name != "test_ray_training.py"]
        items[:] = first + rest
