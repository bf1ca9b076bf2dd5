import os
from pathlib import Path

import pytest

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


def pytest_collection_modifyitems(session, config, items):
    """Run the Ray training tests before any other Ray test in the process.

    prefect-ray's task futures fail with Ray's ``OwnerDiedError`` when the process already
    started and shut down another local Ray session (``tests/test_ray_extract.py`` and
    ``tests/test_ray_client.py`` each start one): seen with prefect-ray 0.6.0 and ray 2.60.
    The first Ray session of a process is unaffected, so the module that drives the
    Prefect flow on Ray goes first; the others start theirs afterwards without trouble.
    """
    first = [item for item in items if item.path.name == "test_ray_training.py"]
    if first:
        rest = [item for item in items if item.path.name != "test_ray_training.py"]
        items[:] = first + rest
