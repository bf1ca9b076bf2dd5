"""The Ray cluster connection that extraction, the job's training runs, the study and the flow share.

``connected(cluster)`` connects to ``'auto'`` or ``'ray://host:port'`` unless Ray is already
up in this process (then it uses that connection), with the Ray Client handshake retried;
``runtime_env()`` ships befa's own packages to the workers.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]


def runtime_env() -> dict[str, Any]:
    """Ship befa's own packages to the workers (third-party packages, torch, open_clip, ...,
    must already be installed in the cluster's Python environment)."""

    # Folder paths rather than module objects: Ray Client copies the runtime_env on
    # connect (its uv hook), and module objects cannot be copied; paths upload the same.
    return {"py_modules": [str(REPO_ROOT / pkg) for pkg in ("pipeline", "encoders", "storage", "models")]}


@contextlib.contextmanager
def connected(cluster: str) -> Iterator[Any]:
    """Connect to ``cluster`` ('auto' or 'ray://host:port') unless Ray is already up in this
    process; disconnect afterwards only if this call connected (the cluster keeps running)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    _init_with_retries(ray, cluster)
    try:
        yield ray
    finally:
        ray.shutdown()


CONNECT_TRIES = 3


def _init_with_retries(ray: Any, cluster: str, *, tries: int = CONNECT_TRIES, wait_s: float = 5.0) -> None:
    """``ray.init`` that survives the Ray Client proxy failing a handshake.

    The proxy forks one server process per client; on a loaded machine that child can die
    at birth (gRPC's fork handlers skipped, seen as ``ConnectionAbortedError:
    Initialization failure from server``). The cluster itself is fine, so connect again
    after a pause; any other error, or the last try's, is raised as it is."""
    for attempt in range(1, tries + 1):
        try:
            ray.init(address=cluster, runtime_env=runtime_env(), log_to_driver=False)
            return
        except ConnectionError as exc:  # ConnectionAbortedError is one
            if attempt == tries or not cluster.startswith("ray://"):
                raise
            print(
                f"Ray Client handshake with {cluster} failed ({type(exc).__name__}); "
                f"retry {attempt}/{tries - 1} in {wait_s:.0f} s",
                flush=True,
            )
            with contextlib.suppress(Exception):
                ray.shutdown()
            time.sleep(wait_s * attempt)
