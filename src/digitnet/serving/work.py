"""Request work that could stall the event loop runs in a small pool of work processes.

Decoding an image and parsing a big JSON body take milliseconds to seconds, mostly in C code
that holds the GIL (orjson, NumPy's list conversion, parts of Pillow and SciPy): in a thread
they would still stop the event loop, and every other client with it, for as long as each
call lasts. In separate processes they cannot, and a decoder that crashes or runs out of
memory takes down one work process, not the server.

``WorkPool.run(function, *args)`` waits for one of ``processes`` slots (at most
``max_wait`` seconds, then ``ServerBusy``: 503 with Retry-After) and runs ``function`` in a
work process, where the served model is ``worker_model()``. Each work process receives the
model once, when it starts (its architecture, parameters and metadata).

``WorkLanes`` holds two pools. Requests known to be cheap (a drawing, a small photo: see
``limits.LIGHT_PIXELS``) take the light lane, whose processes run at the server's own CPU
priority; everything else (large photos, image bombs that pass the size limits, megabyte JSON
bodies) takes the heavy lane, at a lower priority. A cheap request then never queues behind
an expensive one, and gets the CPU before it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio

from digitnet.serving.protocol import Predictor, RequestError, decode_b64, loads_json

if TYPE_CHECKING:
    from digitnet.inference.model import Model, ModelParts
    from digitnet.inference.predict import ImagePrediction

log = logging.getLogger(__name__)

#: how much lower the heavy lane's CPU priority is than the server's (see ``nice(1)``)
WORK_NICENESS = 10
#: the light lane's: its work is short and a client waits for it
LIGHT_NICENESS = 0

P = ParamSpec("P")
T = TypeVar("T")


class ServerBusy(RequestError):
    def __init__(self, waited: float) -> None:
        super().__init__(
            f"the server is busy: no work process became free within {waited:g} s; "
            f"try again shortly",
            503,
            {"Retry-After": str(max(1, math.ceil(waited / 2)))},
        )


class WorkPool:
    """``processes`` work processes for one event loop, started on first use (or by
    ``warm_up``)."""

    def __init__(
        self, model: Model, processes: int, max_wait: float, niceness: int = WORK_NICENESS
    ) -> None:
        self.model = model
        self.processes = processes
        self.max_wait = max_wait
        self.niceness = niceness
        self._executor: ProcessPoolExecutor | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._retry_lock: anyio.Lock | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn: a fork of a process running an event loop and threads is not safe.
            self._executor = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                # The parts, not the Model: a compiled model holds closures pickle cannot send.
                initargs=(self.model.parts(), self.niceness),
            )
        return self._executor

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(*args)`` in a work process; its RequestError is raised here as is."""
        if kwargs:
            raise TypeError("WorkPool.run passes positional arguments only")
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.processes)
        try:
            with anyio.fail_after(self.max_wait):
                await self._limiter.acquire()
        except TimeoutError:
            raise ServerBusy(self.max_wait) from None
        try:
            return await self._run_once_more_if_broken(function, *args)
        finally:
            self._limiter.release()

    async def _run_once_more_if_broken(self, function: Callable[..., T], *args: object) -> T:
        try:
            return await self._submit(function, *args)
        except BrokenProcessPool:
            pass
        # A work process died (a crashing decoder, the kernel's OOM killer), and every request
        # the pool held failed with it, innocent or not. Each is tried once more, one at a
        # time, in a new pool: the innocent ones succeed, and the input that kills its work
        # process again is refused.
        if self._retry_lock is None:
            self._retry_lock = anyio.Lock()
        async with self._retry_lock:
            try:
                return await self._submit(function, *args)
            except BrokenProcessPool:
                raise RequestError(
                    "this input cannot be processed: the work process handling it ended "
                    "(a decoder crashed or memory ran out)"
                ) from None

    async def _submit(self, function: Callable[..., T], *args: object) -> T:
        executor = self._pool()
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, function, *args)
        except BrokenProcessPool:
            if self._executor is executor:
                log.warning("a work process died; starting new ones")
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
            raise

    async def warm_up(self) -> None:
        """Start every work process now, so the first requests do not wait for them."""
        loop = asyncio.get_running_loop()
        pool = self._pool()
        await asyncio.gather(*(loop.run_in_executor(pool, _ready) for _ in range(self.processes)))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class WorkLanes:
    """A light and a heavy ``WorkPool`` (``processes`` of each, see the module docstring)."""

    def __init__(self, model: Model, processes: tuple[int, int], max_wait: float) -> None:
        self.light = WorkPool(model, processes[0], max_wait, LIGHT_NICENESS)
        self.heavy = WorkPool(model, processes[1], max_wait, WORK_NICENESS)

    async def run(self, function: Callable[..., T], *args: object, light: bool = False) -> T:
        """``function(*args)`` in a work process of the light or the heavy lane."""
        return await (self.light if light else self.heavy).run(function, *args)

    async def warm_up(self) -> None:
        await asyncio.gather(self.light.warm_up(), self.heavy.warm_up())

    def close(self) -> None:
        self.light.close()
        self.heavy.close()


def light_image(data: bytes) -> bool:
    """Whether encoded image ``data`` is known to be cheap to preprocess, from its size and
    the size its header declares (microseconds: decided on the event loop)."""
    from digitnet.serving.limits import LIGHT_BYTES, LIGHT_PIXELS, declared_size

    if len(data) > LIGHT_BYTES:
        return False
    size = declared_size(data)
    return size is not None and size[0] * size[1] <= LIGHT_PIXELS


# ---------------------------------------------------------------------------------------------
# In the work processes

_model: Model | None = None
_predictor: Predictor | None = None
_malloc_trim: Callable[[int], int] | None = None


def _start_worker(parts: ModelParts, niceness: int = WORK_NICENESS) -> None:
    global _model, _predictor
    from digitnet.inference.model import Model

    # Ctrl-C reaches the whole process group; the server decides when work processes end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Heavy work yields the CPU to the event loop's short tasks and the light lane's.
    if niceness:
        os.nice(niceness)
    import digitnet.inference.preprocess  # noqa: F401 - loaded before the first request
    import digitnet.inference.reading  # noqa: F401

    _model = Model.from_parts(parts)
    _predictor = Predictor(_model)
    _find_malloc_trim()


def _find_malloc_trim() -> None:
    """glibc's malloc_trim, where there is one (Linux with glibc)."""
    global _malloc_trim
    try:
        import ctypes

        _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        _malloc_trim = None


def _release_memory() -> None:
    # An image of tens of megapixels leaves glibc's heap holding freed pages that later,
    # smaller requests fragment; returning them after each request keeps a work process's
    # resident size flat over hours of traffic.
    if _malloc_trim is not None:
        _malloc_trim(0)


def _ready() -> bool:
    return _model is not None


def worker_model() -> Model:
    assert _model is not None, "called outside a work process"
    return _model


def predict_body(body: bytes) -> bytes:
    """TF Serving's :predict for a request body: the answer's bytes, or RequestError."""
    assert _predictor is not None, "called outside a work process"
    try:
        return _predictor.predict(_predictor.parse(body))
    finally:
        _release_memory()


def predict_image_bytes(data: bytes, name: str) -> ImagePrediction:
    """``predict_image`` on encoded image bytes with the served model."""
    from digitnet.inference.predict import predict_image

    try:
        return predict_image(worker_model(), data, name)
    finally:
        _release_memory()


def read_number_bytes(data: bytes, name: str) -> dict[str, Any]:
    """``read_number`` on encoded image bytes with the served model: ``NumberReading.to_json()``,
    or ``{"no_digit": True, "detail": why}`` for an image without a digit. RequestError for an
    image that cannot be read."""
    from digitnet.errors import ImageError, NoDigitFound
    from digitnet.inference.reading import read_number

    try:
        return read_number(worker_model(), data, name=name).to_json()
    except NoDigitFound as error:
        return {"no_digit": True, "detail": str(error)}
    except ImageError as error:
        raise RequestError(str(error)) from None
    finally:
        _release_memory()


def read_number_json(body: bytes) -> dict[str, Any]:
    """``read_number_bytes`` for a JSON body ``{"b64": "<base64 image>"}``: parsed here, in the
    work process, because it may be megabytes."""
    if not body.strip():
        raise RequestError('the request body is empty: send {"b64": "<base64 image>"}')
    payload = loads_json(body)
    if not isinstance(payload, dict) or set(payload) != {"b64"}:
        keys = sorted(payload) if isinstance(payload, dict) else None
        raise RequestError(
            'the JSON body must be an object with one field, {"b64": "<base64 image>"}'
            + (f"; it has {keys}" if keys is not None else "")
        )
    return read_number_bytes(decode_b64(payload["b64"], "the body"), "the image")
