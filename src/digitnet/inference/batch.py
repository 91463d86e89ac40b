"""Predict folders of many images: answers streamed in input order, every core busy, memory flat.

``predict_files(model, inputs, jobs=...)`` yields one ``ImagePrediction`` per image file, in the
order the files are given (a folder's images sorted by name), as soon as each is known. Files
go in chunks of ``CHUNK_FILES`` through ``predict_image_batch`` (one forward pass per chunk:
a CNN is some 25 times faster per image than one image at a time). With ``jobs`` > 1 and more
than ``IN_PROCESS_FILES`` files the chunks run in ``jobs`` work processes, at most
``2 * jobs`` chunks in flight, so neither the answers nor the images of a large folder are
ever all held at once; a few files are answered in this process, without the second or so
that starting work processes costs.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain, islice
from typing import TYPE_CHECKING

from digitnet.inference.predict import ImagePrediction, iter_image_files, predict_image_batch

if TYPE_CHECKING:
    from digitnet.inference.model import Model, ModelParts

#: files per chunk: one forward pass each; about half a second of work for a CNN
CHUNK_FILES = 128
#: up to this many files are answered in this process, whatever ``jobs`` says
IN_PROCESS_FILES = 2 * CHUNK_FILES
#: chunks queued or running per work process: enough to keep each busy, few enough to hold
CHUNKS_PER_JOB = 2

# A file to read, or the error of a folder that could not be listed (passed on in its place).
_Item = str | ImagePrediction
# A chunk, the pool it went to, and its answers to come.
_Submitted = tuple[list[_Item], ProcessPoolExecutor, Future[list[ImagePrediction]]]


def predict_files(
    model: Model,
    inputs: Iterable[str | os.PathLike[str]],
    *,
    jobs: int = 1,
    keep_images: bool = False,
) -> Iterator[ImagePrediction]:
    """Predict every image in ``inputs`` (files or folders), yielding answers in input order.

    ``jobs``: work processes for inputs of more than ``IN_PROCESS_FILES`` files (1: none).
    ``keep_images``: keep each answer's ``image`` (the 28x28 input the model saw); without it
    the work processes do not send them back. Unreadable files get their own error and never
    stop the rest.
    """
    items = iter_image_files(inputs)
    head = list(islice(items, IN_PROCESS_FILES + 1))
    chunks = _chunks(chain(head, items))
    if jobs <= 1 or len(head) <= IN_PROCESS_FILES:
        for chunk in chunks:
            yield from _predict_chunk(model, chunk, keep_images)
        return
    workers = _Workers(model, jobs)
    pending: deque[_Submitted] = deque()
    try:
        for chunk in chunks:
            pending.append(workers.submit(chunk, keep_images))
            if len(pending) >= CHUNKS_PER_JOB * jobs:
                yield from workers.answers(pending.popleft(), keep_images)
        while pending:
            yield from workers.answers(pending.popleft(), keep_images)
    finally:
        # Also when the reader stops early (a closed pipe, Ctrl-C): queued chunks are dropped.
        workers.close()


#: the answer for a file whose work process ended while reading it, twice
WORKER_DIED = (
    "this image cannot be processed: the work process reading it ended (a decoder crashed or "
    "memory ran out)"
)


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


class _Workers:
    """``jobs`` work processes, started again when one dies.

    A work process that dies (a decoder that crashes, the kernel's OOM killer) breaks the
    whole pool and every chunk it held. Those chunks are then run again one file at a time in
    a new pool, so the innocent files are answered and only the file that ends its work
    process again gets an error, in its place: the run goes on.
    """

    def __init__(self, model: Model, jobs: int) -> None:
        self.model = model
        self.jobs = jobs
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn: forking a process whose BLAS already started threads can deadlock the children.
        return ProcessPoolExecutor(
            self.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            # The parts, not the Model: a compiled model holds closures pickle cannot send.
            initargs=(self.model.parts(),),
        )

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        if self.pool is broken:
            broken.shutdown(wait=False, cancel_futures=True)
            self.pool = self._start()

    def submit(self, chunk: list[_Item], keep_images: bool) -> _Submitted:
        pool = self.pool
        try:
            future = pool.submit(_work, chunk, keep_images)
        except BrokenProcessPool as error:
            # A work process died since the last answer was taken: the chunk is handled as
            # the chunks the broken pool held are, when its answer is asked for.
            future = Future()
            future.set_exception(error)
        return chunk, pool, future

    def answers(self, submitted: _Submitted, keep_images: bool) -> list[ImagePrediction]:
        chunk, pool, future = submitted
        try:
            return future.result()
        except BrokenProcessPool:
            self._restart(pool)
        results = []
        for item in chunk:
            if isinstance(item, ImagePrediction):
                results.append(item)
                continue
            pool = self.pool
            try:
                results.extend(pool.submit(_work, [item], keep_images).result())
            except BrokenProcessPool:
                self._restart(pool)
                results.append(ImagePrediction(item, error=WORKER_DIED))
        return results

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _chunks(items: Iterator[_Item]) -> Iterator[list[_Item]]:
    while chunk := list(islice(items, CHUNK_FILES)):
        yield chunk


def _predict_chunk(model: Model, chunk: list[_Item], keep_images: bool) -> list[ImagePrediction]:
    files = [item for item in chunk if isinstance(item, str)]
    answers = iter(predict_image_batch(model, [(path, path) for path in files]))
    results = [item if isinstance(item, ImagePrediction) else next(answers) for item in chunk]
    if not keep_images:
        for result in results:
            result.image = None
    return results


# ---------------------------------------------------------------------------------------------
# In the work processes

_model: Model | None = None


def _start_worker(parts: ModelParts) -> None:
    global _model
    from digitnet.inference.model import Model

    # Ctrl-C reaches the whole process group; the parent stops the work processes itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import digitnet.inference.preprocess  # noqa: F401 - its libraries loaded before the limit

    # One BLAS thread per process: the processes already use every core, and more threads
    # than cores spin against each other.
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass
    else:
        threadpool_limits(limits=1)
    _model = Model.from_parts(parts)


def _work(chunk: list[_Item], keep_images: bool) -> list[ImagePrediction]:
    assert _model is not None, "called outside a work process"
    return _predict_chunk(_model, chunk, keep_images)
