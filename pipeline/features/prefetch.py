"""Images decoded in threads, the next batches while the current one runs forward.

On CPU, extraction reads, checks, decodes and preprocesses images in a small thread pool
(:func:`prefetched_batches`) instead of DataLoader worker processes: PIL releases the GIL
while it decodes and resizes, so the threads run beside the forward pass, with no worker
process to start, no transform to pickle and no tensors to pass through shared memory.
The pool works :data:`AHEAD` batches ahead of the one the forward pass is on; batches come
out in order, as ``collate_images`` makes them, so the features are those of the serial
path (``threads=0``: decode, then forward, one batch after the other).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from pipeline.features.images import ImageItems, collate_images

AHEAD = 2  # batches decoded (or decoding) beyond the one being encoded


def prefetched_batches(items: ImageItems, batch_size: int, threads: int, ahead: int = AHEAD) -> Iterator[tuple]:
    """``collate_images`` batches of ``items`` in order; ``threads`` decoding threads (0: serial)."""
    n = len(items)
    starts = iter(range(0, n, batch_size))
    if threads <= 0:
        for start in starts:
            yield collate_images([items[i] for i in range(start, min(start + batch_size, n))])
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="befa-decode")
    pending: deque[list[Future]] = deque()

    def submit() -> None:
        start = next(starts, None)
        if start is not None:
            pending.append([pool.submit(items.__getitem__, i) for i in range(start, min(start + batch_size, n))])

    try:
        for _ in range(max(1, ahead)):
            submit()
        while pending:
            futures = pending.popleft()
            submit()
            yield collate_images([f.result() for f in futures])
    finally:  # the consumer stopped early (an error, a closed generator): drop what is queued
        pool.shutdown(wait=True, cancel_futures=True)
