"""Supervised pool of spawned worker processes, each holding one warm engine.

The parent side is asyncio-native. Each worker slot has a dispatcher task that (re)starts its process, takes jobs
from one shared admission queue and waits for the outcome on the worker's pipe *and* its process sentinel, so a
dead worker is noticed the moment it dies. Admission never blocks: a full queue is refused at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import multiprocessing as mp
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from typing import Final

import numpy as np
import numpy.typing as npt
import psutil

from tts_server.config import Settings
from tts_server.inference.engine import InputFormat, VoiceInfo
from tts_server.inference.messages import (
    Chunk,
    Failure,
    Job,
    Ready,
    Result,
    Shutdown,
    StartupFailed,
    WorkerMessage,
)
from tts_server.inference.worker import worker_main

log = logging.getLogger("tts_server.pool")

RESTART_REASONS: Final = ("crash", "timeout", "recycle_jobs", "recycle_memory")
WORKER_STATES: Final = ("starting", "ready", "busy", "dead")

#: A job is retried on another worker at most this many times after its worker died under it.
MAX_ATTEMPTS: Final = 2


# --- errors -------------------------------------------------------------------------------------------------


class PoolError(Exception):
    """Base class of everything the pool raises for a job."""


class Overloaded(PoolError):
    """The admission queue is full."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("server overloaded")
        self.retry_after = retry_after


class NotReady(PoolError):
    """No worker can take jobs (still loading, all slots dead, or draining)."""

    def __init__(self, retry_after: int, reason: str) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.reason = reason


class DeadlineExceeded(PoolError):
    """The job did not finish before its deadline."""


class WorkerCrashed(PoolError):
    """The worker died while running the job, and so did the retry."""


class JobFailed(PoolError):
    """The engine rejected or failed the job; the worker is fine."""

    def __init__(self, message: str, param: str | None, client_error: bool) -> None:
        super().__init__(message)
        self.public_message = message
        self.param = param
        self.client_error = client_error


class JobCancelled(PoolError):
    """The client went away."""


# --- public data --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthesisOutcome:
    audio: npt.NDArray[np.float32]
    sample_rate: int
    audio_seconds: float
    queue_wait_seconds: float
    inference_seconds: float
    stage_seconds: Mapping[str, float]
    attempts: int


@dataclass(frozen=True)
class WorkerInfo:
    slot: int
    state: str
    pid: int | None
    jobs_done: int
    load_seconds: float | None


@dataclass(frozen=True)
class PoolStats:
    queue_depth: int
    queue_capacity: int
    in_progress: int
    workers: tuple[WorkerInfo, ...]
    restarts: Mapping[str, int]
    ready: bool
    draining: bool

    def count(self, state: str) -> int:
        return sum(1 for w in self.workers if w.state == state)


class _SlotState(Enum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    DEAD = "dead"
    STOPPED = "stopped"


_DIED: Final = "died"
_TIMEOUT: Final = "timeout"


def _wait_message(conn: Connection, sentinel: int, timeout: float | None) -> WorkerMessage | str:
    """Block (in a thread) until the worker sends something, dies, or the timeout passes."""
    ready = wait([conn, sentinel], timeout)
    if conn in ready:
        # Data wins over death: a worker may send its result and exit right after.
        try:
            msg: WorkerMessage = conn.recv()
        except (EOFError, OSError):
            return _DIED
        return msg
    return _DIED if ready else _TIMEOUT


# --- jobs ---------------------------------------------------------------------------------------------------


class JobHandle:
    """The parent's view of one admitted job: its outcome future and, for streaming, its chunks."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self.job = job
        self.admitted_at = time.monotonic()
        self.started_at: float | None = None
        self.attempts = 0
        self.chunks_delivered = 0
        self.cancelled = False
        self._future: asyncio.Future[SynthesisOutcome] = loop.create_future()
        self._chunks: asyncio.Queue[Chunk | None] = asyncio.Queue()

    @property
    def done(self) -> bool:
        return self._future.done()

    async def result(self) -> SynthesisOutcome:
        return await asyncio.shield(self._future)

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Yield streamed chunks in order; raises the job's error if it fails."""
        while True:
            chunk = await self._chunks.get()
            if chunk is None:
                break
            yield chunk
        await self.result()  # surfaces a failure that ended the stream

    def _deliver_chunk(self, chunk: Chunk) -> None:
        self.chunks_delivered += 1
        self._chunks.put_nowait(chunk)

    def _finish(self, outcome: SynthesisOutcome) -> None:
        if not self._future.done():
            self._future.set_result(outcome)
        self._chunks.put_nowait(None)

    def _fail(self, exc: PoolError) -> None:
        if not self._future.done():
            self._future.set_exception(exc)
            # Nobody may be awaiting a cancelled job; don't let asyncio log "exception never retrieved".
            self._future.exception()
        self._chunks.put_nowait(None)


class _AdmissionQueue:
    """FIFO with a hard capacity that hands jobs straight to an idle dispatcher when there is one."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.deque[JobHandle] = collections.deque()
        self._getters: collections.deque[asyncio.Future[JobHandle]] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def _hand_off(self, handle: JobHandle) -> bool:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(handle)
                return True
        return False

    def offer(self, handle: JobHandle) -> bool:
        if self._hand_off(handle):
            return True
        if len(self._items) >= self.capacity:
            return False
        self._items.append(handle)
        return True

    def push_front(self, handle: JobHandle) -> None:
        """Re-queue a retried job ahead of the rest; it was admitted already, so capacity does not apply."""
        if not self._hand_off(handle):
            self._items.appendleft(handle)

    def remove(self, handle: JobHandle) -> bool:
        try:
            self._items.remove(handle)
        except ValueError:
            return False
        return True

    def drain_all(self) -> list[JobHandle]:
        items = list(self._items)
        self._items.clear()
        return items

    async def take(self) -> JobHandle:
        if self._items:
            return self._items.popleft()
        getter: asyncio.Future[JobHandle] = asyncio.get_running_loop().create_future()
        self._getters.append(getter)
        try:
            return await getter
        except asyncio.CancelledError:
            if getter.done() and not getter.cancelled():
                # A job was handed to us just as we were cancelled: give it back, never lose it.
                self._items.appendleft(getter.result())
            else:
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
            raise


# --- worker slots -------------------------------------------------------------------------------------------


@dataclass
class _Slot:
    index: int
    state: _SlotState = _SlotState.STARTING
    process: SpawnProcess | None = None
    conn: Connection | None = None
    jobs_done: int = 0
    load_seconds: float | None = None
    consecutive_failures: int = 0
    current: JobHandle | None = None
    died: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class WorkerPool:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool = settings.pool
        self._ctx = mp.get_context("spawn")
        self._queue = _AdmissionQueue(self._pool.queue_size)
        self._slots = [_Slot(i) for i in range(self._pool.workers)]
        self._tasks: list[asyncio.Task[None]] = []
        # One waiting thread per busy worker plus spawn/join work; the default executor could starve.
        self._executor = ThreadPoolExecutor(max_workers=self._pool.workers * 2 + 2, thread_name_prefix="tts-pool")
        self._ids = itertools.count(1)
        self._restarts: collections.Counter[str] = collections.Counter({r: 0 for r in RESTART_REASONS})
        self._voices: dict[str, VoiceInfo] = {}
        self._inflight: set[JobHandle] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._ever_ready = asyncio.Event()
        self._draining = False
        self._withdrawn = False
        self._closing = False
        self._service_ewma: float | None = None

    # -- lifecycle --

    async def start(self) -> None:
        """Start every worker slot; returns at once (use ``wait_ready`` to wait for the first ready worker)."""
        self._tasks = [asyncio.create_task(self._run_slot(slot), name=f"tts-slot-{slot.index}") for slot in self._slots]

    async def wait_ready(self, timeout_s: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._ever_ready.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def begin_drain(self) -> None:
        """Report not-ready while still admitting jobs: load balancers need a moment to stop routing here, and
        what they send meanwhile should be served, not refused. ``drain`` then stops admission."""
        self._withdrawn = True

    async def drain(self, timeout_s: float) -> bool:
        """Stop admitting and wait for queued and running jobs to finish. True when everything finished."""
        self._draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("drain timed out with %d jobs unfinished", len(self._inflight))
            return False
        return True

    async def close(self) -> None:
        """Stop all workers now; jobs still pending fail with NotReady."""
        self._draining = True
        self._closing = True
        for handle in self._queue.drain_all():
            self._complete_failure(handle, NotReady(1, "server shutting down"))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._stop_process(slot, graceful=True) for slot in self._slots))
        for handle in list(self._inflight):
            self._complete_failure(handle, NotReady(1, "server shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- state --

    @property
    def ready(self) -> bool:
        return not self.draining and any(s.state in (_SlotState.READY, _SlotState.BUSY) for s in self._slots)

    @property
    def draining(self) -> bool:
        return self._draining or self._withdrawn

    @property
    def voices(self) -> Mapping[str, VoiceInfo]:
        return self._voices

    def stats(self) -> PoolStats:
        return PoolStats(
            queue_depth=len(self._queue),
            queue_capacity=self._queue.capacity,
            in_progress=sum(1 for s in self._slots if s.current is not None),
            workers=tuple(
                WorkerInfo(s.index, s.state.value, s.pid if s.state is not _SlotState.DEAD else None, s.jobs_done,
                           s.load_seconds)
                for s in self._slots
            ),
            restarts=dict(self._restarts),
            ready=self.ready,
            draining=self.draining,
        )

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: the time the current backlog needs on the live workers."""
        live = max(1, sum(1 for s in self._slots if s.state in (_SlotState.READY, _SlotState.BUSY)))
        per_job = self._service_ewma if self._service_ewma is not None else 1.0
        backlog = len(self._queue) + sum(1 for s in self._slots if s.current is not None)
        return max(1, min(60, math.ceil(per_job * backlog / live)))

    # -- admission --

    def submit(
        self, *, text: str, voice: str, emotion: str, speed: float, request_id: str, stream: bool = False,
        timeout_s: float | None = None, input_format: InputFormat = "text",
    ) -> JobHandle:
        """Admit a job or raise at once (``NotReady``, ``Overloaded``); never waits."""
        if self._draining:
            raise NotReady(self.retry_after(), "server is draining")
        if not self._ever_ready.is_set() or all(s.state is _SlotState.DEAD for s in self._slots):
            raise NotReady(5, "no worker is ready")
        timeout = self._pool.job_timeout_s if timeout_s is None else timeout_s
        job = Job(
            job_id=next(self._ids), request_id=request_id, text=text, voice=voice, emotion=emotion, speed=speed,
            deadline=time.monotonic() + timeout, stream=stream, input_format=input_format,
        )
        handle = JobHandle(job, asyncio.get_running_loop())
        if not self._queue.offer(handle):
            raise Overloaded(self.retry_after())
        self._inflight.add(handle)
        self._idle.clear()
        return handle

    def cancel(self, handle: JobHandle) -> None:
        """The client went away: drop the job if it is still queued; a running job finishes and is discarded."""
        handle.cancelled = True
        if self._queue.remove(handle):
            self._complete_failure(handle, JobCancelled("client disconnected"))

    async def synthesize(
        self, *, text: str, voice: str, emotion: str, speed: float, request_id: str,
    ) -> SynthesisOutcome:
        handle = self.submit(text=text, voice=voice, emotion=emotion, speed=speed, request_id=request_id)
        try:
            return await handle.result()
        except asyncio.CancelledError:
            self.cancel(handle)
            raise

    # -- completion --

    def _complete(self, handle: JobHandle, outcome: SynthesisOutcome) -> None:
        handle._finish(outcome)
        self._forget(handle)

    def _complete_failure(self, handle: JobHandle, exc: PoolError) -> None:
        handle._fail(exc)
        self._forget(handle)

    def _forget(self, handle: JobHandle) -> None:
        self._inflight.discard(handle)
        if not self._inflight:
            self._idle.set()

    # -- slots --

    async def _run_slot(self, slot: _Slot) -> None:
        backoff = self._pool.restart_backoff_s
        try:
            while not self._closing:
                if not await self._start_process(slot):
                    slot.consecutive_failures += 1
                else:
                    reason = await self._serve(slot)
                    if reason is None:
                        return
                    self._restarts[reason] += 1
                    if reason == "crash":
                        slot.consecutive_failures += 1
                    elif reason != "timeout":
                        # Planned recycle: start the replacement at once.
                        slot.consecutive_failures = 0
                        backoff = self._pool.restart_backoff_s
                        continue
                if slot.consecutive_failures >= self._pool.crash_loop_threshold:
                    log.error("worker slot %d failed %d times in a row; marking it dead", slot.index,
                              slot.consecutive_failures)
                    slot.state = _SlotState.DEAD
                    return
                slot.state = _SlotState.STARTING
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._pool.restart_backoff_max_s)
        finally:
            if slot.current is not None:
                self._requeue_or_fail(slot.current)
                slot.current = None

    async def _start_process(self, slot: _Slot) -> bool:
        loop = asyncio.get_running_loop()
        slot.state = _SlotState.STARTING
        slot.jobs_done = 0
        slot.died = asyncio.Event()
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main, args=(child_conn, self._settings, slot.index), name=f"tts-worker-{slot.index}",
            daemon=True,
        )
        slot.process, slot.conn = process, parent_conn
        started = time.perf_counter()
        await loop.run_in_executor(self._executor, process.start)
        child_conn.close()
        msg = await loop.run_in_executor(
            self._executor, _wait_message, parent_conn, process.sentinel, self._pool.startup_timeout_s
        )
        if not isinstance(msg, Ready):
            detail = msg.message if isinstance(msg, StartupFailed) else msg
            log.error("worker slot %d failed to start (%s)", slot.index, detail)
            await self._stop_process(slot, graceful=False)
            return False
        slot.load_seconds = msg.load_seconds
        for voice in msg.voices:
            self._voices.setdefault(voice.name, voice)
        slot.state = _SlotState.READY
        loop.add_reader(process.sentinel, slot.died.set)
        log.info("worker slot %d ready (pid %s, loaded in %.2fs, startup %.2fs)", slot.index, msg.pid,
                 msg.load_seconds, time.perf_counter() - started)
        self._ever_ready.set()
        return True

    async def _serve(self, slot: _Slot) -> str | None:
        """Run jobs on a ready worker until it has to be replaced; returns the restart reason (None = shutdown)."""
        loop = asyncio.get_running_loop()
        assert slot.process is not None
        assert slot.conn is not None
        process, conn = slot.process, slot.conn
        while True:
            slot.state = _SlotState.READY
            take = asyncio.ensure_future(self._queue.take())
            died = asyncio.ensure_future(slot.died.wait())
            try:
                await asyncio.wait({take, died}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                take.cancel()
                died.cancel()
                raise
            died.cancel()
            if slot.died.is_set():
                if take.done():
                    self._queue.push_front(take.result())
                else:
                    take.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await take
                log.warning("idle worker slot %d (pid %s) died", slot.index, process.pid)
                await self._stop_process(slot, graceful=False)
                return "crash"
            handle = take.result()
            if handle.cancelled:
                self._complete_failure(handle, JobCancelled("client disconnected"))
                continue
            now = time.monotonic()
            if now >= handle.job.deadline:
                # Expired while queued: never run it.
                self._complete_failure(handle, DeadlineExceeded("deadline exceeded while queued"))
                continue
            slot.state = _SlotState.BUSY
            slot.current = handle
            handle.attempts += 1
            if handle.started_at is None:
                handle.started_at = now
            try:
                conn.send(handle.job)
            except (BrokenPipeError, OSError):
                return await self._worker_lost(slot, handle)
            while True:
                remaining = handle.job.deadline - time.monotonic()
                msg = await loop.run_in_executor(
                    self._executor, _wait_message, conn, process.sentinel, max(0.0, remaining)
                )
                if isinstance(msg, Chunk):
                    if not handle.cancelled:
                        handle._deliver_chunk(msg)
                    continue
                break
            slot.current = None
            if msg == _DIED:
                return await self._worker_lost(slot, handle)
            if msg == _TIMEOUT:
                log.warning("job %d (request %s) ran past its deadline on slot %d; replacing the worker",
                            handle.job.job_id, handle.job.request_id, slot.index)
                self._complete_failure(handle, DeadlineExceeded("deadline exceeded while running"))
                await self._stop_process(slot, graceful=False)
                return "timeout"
            if isinstance(msg, Result):
                slot.jobs_done += 1
                slot.consecutive_failures = 0
                self._record_service_time(msg.inference_seconds)
                assert handle.started_at is not None
                self._complete(handle, SynthesisOutcome(
                    audio=msg.audio, sample_rate=msg.sample_rate, audio_seconds=msg.audio_seconds,
                    queue_wait_seconds=handle.started_at - handle.admitted_at,
                    inference_seconds=msg.inference_seconds, stage_seconds=dict(msg.stage_seconds),
                    attempts=handle.attempts,
                ))
            elif isinstance(msg, Failure):
                slot.jobs_done += 1
                if msg.expired:
                    self._complete_failure(handle, DeadlineExceeded("deadline exceeded before start"))
                else:
                    self._complete_failure(handle, JobFailed(msg.message, msg.param, msg.client_error))
            else:
                log.error("unexpected message %r from slot %d", type(msg).__name__, slot.index)
            reason = self._recycle_reason(slot)
            if reason is not None:
                log.info("recycling worker slot %d (pid %s): %s", slot.index, process.pid, reason)
                await self._stop_process(slot, graceful=True)
                return reason

    async def _worker_lost(self, slot: _Slot, handle: JobHandle) -> str:
        slot.current = None
        log.warning("worker slot %d (pid %s) died running job %d (request %s)", slot.index, slot.pid,
                    handle.job.job_id, handle.job.request_id)
        self._requeue_or_fail(handle)
        await self._stop_process(slot, graceful=False)
        return "crash"

    def _requeue_or_fail(self, handle: JobHandle) -> None:
        if handle.done:
            return
        if handle.cancelled:
            self._complete_failure(handle, JobCancelled("client disconnected"))
        elif self._closing:
            self._complete_failure(handle, NotReady(1, "server shutting down"))
        elif handle.attempts < MAX_ATTEMPTS and handle.chunks_delivered == 0:
            # TTS is idempotent: run it again elsewhere. Not once audio went out, or the client would hear it twice.
            self._queue.push_front(handle)
        else:
            self._complete_failure(handle, WorkerCrashed("worker died while synthesizing"))

    def _recycle_reason(self, slot: _Slot) -> str | None:
        if self._pool.max_jobs_per_worker and slot.jobs_done >= self._pool.max_jobs_per_worker:
            return "recycle_jobs"
        if self._pool.max_worker_rss_mb and slot.pid is not None:
            try:
                rss = psutil.Process(slot.pid).memory_info().rss
            except psutil.Error:
                return None
            if rss > self._pool.max_worker_rss_mb * 1024 * 1024:
                return "recycle_memory"
        return None

    def _record_service_time(self, seconds: float) -> None:
        prev = self._service_ewma
        self._service_ewma = seconds if prev is None else 0.8 * prev + 0.2 * seconds

    async def _stop_process(self, slot: _Slot, *, graceful: bool) -> None:
        process, conn = slot.process, slot.conn
        if process is None:
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(process.sentinel)
        if process.pid is not None and process.exitcode is None:
            if graceful and conn is not None:
                with contextlib.suppress(OSError):
                    conn.send(Shutdown())
                await loop.run_in_executor(self._executor, process.join, self._pool.kill_grace_s)
            if process.exitcode is None:
                process.terminate()
                await loop.run_in_executor(self._executor, process.join, self._pool.kill_grace_s)
            if process.exitcode is None:
                # SIGTERM does nothing to a stopped (SIGSTOP) or wedged process.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                await loop.run_in_executor(self._executor, process.join, 5.0)
        if conn is not None:
            conn.close()
        with contextlib.suppress(ValueError):
            process.close()
        slot.process, slot.conn = None, None
        if slot.state is not _SlotState.DEAD:
            slot.state = _SlotState.STOPPED if self._closing else _SlotState.STARTING
