"""Supervised pool of spawned worker processes, each holding one warm engine.

The parent side is asyncio-native. Each worker slot has a dispatcher task that (re)starts its process, takes jobs
from one shared admission queue and reads the outcome from an inbox that a reader thread fills from the worker's pipe
*and* its process sentinel, so a dead worker is noticed the moment it dies. Heartbeats (``Ping``/``Pong``, answered
by a thread in the worker, busy or idle) find hung workers. A slot never gives up: it retries with capped
exponential back-off, and while no slot can produce a worker, jobs fail at once instead of waiting. Admission never
blocks: a full queue is refused at once, and a queued job fails exactly at its deadline.
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
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import psutil

from tts_server.config import Settings
from tts_server.inference.engine import InputFormat, VoiceInfo
from tts_server.inference.messages import (
    Cancel,
    Cancelled,
    Chunk,
    Failure,
    Job,
    Ping,
    Pong,
    Ready,
    Result,
    Shutdown,
    StartupFailed,
    WorkerMessage,
)
from tts_server.inference.worker import worker_main

log = logging.getLogger("tts_server.pool")

RESTART_REASONS: Final = ("crash", "timeout", "recycle_jobs", "recycle_memory")


class WorkerState(StrEnum):
    """State of a worker slot (the values are the ``state`` label of ``tts_workers``)."""

    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    #: Not serving: its last start failed. The slot keeps retrying with capped back-off; it is never given up.
    DEAD = "dead"
    #: The pool has shut down.
    STOPPED = "stopped"


#: States a running server reports (``stopped`` only exists after shutdown).
WORKER_STATES: Final = (WorkerState.STARTING, WorkerState.READY, WorkerState.BUSY, WorkerState.DEAD)
_LIVE: Final = frozenset({WorkerState.READY, WorkerState.BUSY})

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
    """The worker died (or hung) while running the job and it could not be retried."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        #: Attempts made, the failed one included: 1 when a streamed job died after audio went out.
        self.attempts = attempts


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
    #: JSON answer of a preview job; empty for synthesis.
    preview: str = ""
    #: A timestamps job's document (``TimestampBuilder.result``) as JSON text; empty otherwise.
    timestamps: str = ""


@dataclass(frozen=True)
class WorkerInfo:
    slot: int
    state: WorkerState
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

    def count(self, state: WorkerState) -> int:
        return sum(1 for w in self.workers if w.state == state)


_DIED: Final = "died"


def _pump(conn: Connection, sentinel: int, post: Callable[[WorkerMessage | str], None]) -> None:
    """Reader thread of one worker process: forward every message, then ``_DIED`` once it exits."""
    try:
        while True:
            ready = wait([conn, sentinel])
            if conn not in ready:
                break
            # Data wins over death: a worker may send its result and exit right after.
            try:
                msg: WorkerMessage = conn.recv()
            except (EOFError, OSError):
                break
            post(msg)
    except (OSError, ValueError):
        pass  # the parent closed the pipe: the worker is being stopped
    post(_DIED)


async def _receive(inbox: asyncio.Queue[WorkerMessage | str], timeout_s: float) -> WorkerMessage | str | None:
    """The next message, or None after ``timeout_s``. Not ``asyncio.wait_for``: on Python 3.11 it can swallow a
    cancellation that arrives with the message, and a slot task that ignored ``close()`` would serve forever."""
    try:
        async with asyncio.timeout(timeout_s):
            return await inbox.get()
    except TimeoutError:
        return None


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
        self._timer: asyncio.TimerHandle | None = None
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

    def offer(self, handle: JobHandle, spare: int = 0) -> bool:
        """Hand ``handle`` to a waiting dispatcher or queue it; False when ``capacity`` + ``spare`` jobs wait."""
        if self._hand_off(handle):
            return True
        if len(self._items) >= self.capacity + spare:
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

    def getter(self) -> asyncio.Future[JobHandle]:
        """The next job, as a future registered at once: a job offered before the caller runs again goes to it.
        (Registered by a task's first step instead, a worker that has just finished a job would look busy to the
        job submitted as its result arrives, and with ``capacity`` 0 that job would be refused.) Cancel the future
        to stop waiting; a job it already got is the caller's to give back (``push_front``)."""
        getter: asyncio.Future[JobHandle] = asyncio.get_running_loop().create_future()
        if self._items:
            getter.set_result(self._items.popleft())
            return getter
        self._getters.append(getter)
        getter.add_done_callback(self._forget)
        return getter

    def _forget(self, getter: asyncio.Future[JobHandle]) -> None:
        if getter.cancelled():
            with contextlib.suppress(ValueError):
                self._getters.remove(getter)


# --- worker slots -------------------------------------------------------------------------------------------


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self._state = WorkerState.STARTING
        #: When the slot last stopped being ready or busy (for liveness); None while it never was.
        self.left_live_at: float | None = None
        self.process: SpawnProcess | None = None
        self.conn: Connection | None = None
        self.inbox: asyncio.Queue[WorkerMessage | str] = asyncio.Queue()
        self.pump: asyncio.Future[None] | None = None
        self.jobs_done = 0
        self.load_seconds: float | None = None
        self.consecutive_failures = 0
        #: The last start attempt failed: the slot cannot produce a worker right now.
        self.failing = False
        self.attempted_start = False
        #: ``StartupFailed`` message of the slot's first start, when that failed.
        self.first_error: str | None = None
        self.current: JobHandle | None = None
        #: When the worker last sent anything, and when the ping it has not answered yet went out.
        self.last_seen = 0.0
        self.ping_sent_at: float | None = None
        #: Idle but not taking jobs until it answers its ping: it will take one then (see ``WorkerPool.submit``).
        self.idle_unclaimed = False

    @property
    def state(self) -> WorkerState:
        return self._state

    @state.setter
    def state(self, value: WorkerState) -> None:
        if self._state in _LIVE and value not in _LIVE:
            self.left_live_at = time.monotonic()
        self._state = value

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def seen(self) -> None:
        self.last_seen = time.monotonic()
        self.ping_sent_at = None


class WorkerPool:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool = settings.pool
        self._ctx = mp.get_context("spawn")
        self._queue = _AdmissionQueue(self._pool.queue_size)
        self._slots = [_Slot(i) for i in range(self._pool.workers)]
        self._tasks: list[asyncio.Task[None]] = []
        # One reader thread per live worker plus spawn/join work; the default executor could starve.
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
        self._started_at = time.monotonic()
        self._startup_error: str | None = None

    # -- lifecycle --

    async def start(self) -> None:
        """Start every worker slot; returns at once (use ``wait_ready`` to wait for the first ready worker)."""
        self._started_at = time.monotonic()
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
        """Admitting, and at least one worker serves and answers its heartbeats."""
        now = time.monotonic()
        return not self.draining and any(s.state in _LIVE and self._responsive(s, now) for s in self._slots)

    @property
    def live(self) -> bool:
        """False once no worker has been ready for ``pool.liveness_timeout_s``: the process cannot heal itself."""
        if any(s.state in _LIVE for s in self._slots):
            return True
        last = max([self._started_at, *(s.left_live_at for s in self._slots if s.left_live_at is not None)])
        return time.monotonic() - last < self._pool.liveness_timeout_s

    @property
    def startup_error(self) -> str | None:
        """Why no worker could start, when every slot's first start failed to load the engine (a broken model or
        configuration that retrying will not fix); None otherwise."""
        return self._startup_error

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
                WorkerInfo(s.index, s.state, s.pid if s.state is not WorkerState.DEAD else None, s.jobs_done,
                           s.load_seconds)
                for s in self._slots
            ),
            restarts=dict(self._restarts),
            ready=self.ready,
            draining=self.draining,
        )

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: the time the current backlog needs on the live workers."""
        live = max(1, sum(1 for s in self._slots if s.state in _LIVE))
        per_job = self._service_ewma if self._service_ewma is not None else 1.0
        backlog = len(self._queue) + sum(1 for s in self._slots if s.current is not None)
        return max(1, min(60, math.ceil(per_job * backlog / live)))

    def _responsive(self, slot: _Slot, now: float) -> bool:
        # A healthy worker answers within milliseconds; one heartbeat interval late already means trouble.
        return slot.ping_sent_at is None or now - slot.ping_sent_at < self._pool.heartbeat_interval_s

    def _no_worker(self) -> bool:
        """No worker serves and every slot's last start failed: waiting would not help anyone."""
        return all(s.failing and s.state not in _LIVE for s in self._slots)

    # -- admission --

    def submit(
        self, *, text: str, voice: str, emotion: str, speed: float, request_id: str, stream: bool = False,
        timeout_s: float | None = None, input_format: InputFormat = "text",
        kind: Literal["synthesize", "preview"] = "synthesize", lexicon_version: int = 0, pitch: float = 0.0,
        volume_db: float = 0.0, seed: int | None = None, timestamps: bool = False,
    ) -> JobHandle:
        """Admit a job or raise at once (``NotReady``, ``Overloaded``); never waits."""
        if self._draining:
            raise NotReady(self.retry_after(), "server is draining")
        if not self._ever_ready.is_set() or self._no_worker():
            raise NotReady(5, "no worker is ready")
        timeout = self._pool.job_timeout_s if timeout_s is None else timeout_s
        job = Job(
            job_id=next(self._ids), request_id=request_id, text=text, voice=voice, emotion=emotion, speed=speed,
            deadline=time.monotonic() + timeout, stream=stream, input_format=input_format, kind=kind,
            lexicon_version=lexicon_version, pitch=pitch, volume_db=volume_db, seed=seed, timestamps=timestamps,
        )
        loop = asyncio.get_running_loop()
        handle = JobHandle(job, loop)
        # An idle worker that is only waiting for its pong takes a job right after it: room for one more each (with
        # queue_size = 0 a job arriving during a heartbeat would otherwise be refused by an idle pool).
        if not self._queue.offer(handle, spare=sum(slot.idle_unclaimed for slot in self._slots)):
            raise Overloaded(self.retry_after())
        self._inflight.add(handle)
        self._idle.clear()
        # The 504 is due at the deadline even while the job waits behind others, not when a worker frees up.
        handle._timer = loop.call_later(timeout, self._expire_queued, handle)
        return handle

    def cancel(self, handle: JobHandle) -> None:
        """The client went away: drop the job if it is still queued; a running streaming job is stopped at the
        next sentence (the worker stays in service); a running whole-audio job finishes and is discarded."""
        handle.cancelled = True
        if self._queue.remove(handle):
            self._complete_failure(handle, JobCancelled("client disconnected"))
            return
        if not handle.job.stream or handle.done:
            return
        for slot in self._slots:
            if slot.current is handle and slot.conn is not None:
                with contextlib.suppress(OSError):
                    slot.conn.send(Cancel(handle.job.job_id))

    def _expire_queued(self, handle: JobHandle) -> None:
        if self._queue.remove(handle):
            log.info("job %d (request %s) reached its deadline while queued", handle.job.job_id,
                     handle.job.request_id)
            self._complete_failure(handle, DeadlineExceeded("deadline exceeded while queued"))

    def _fail_queued_if_no_worker(self) -> None:
        if not self._no_worker():
            return
        for handle in self._queue.drain_all():
            self._complete_failure(handle, NotReady(5, "no worker is available"))

    # -- completion --

    def _complete(self, handle: JobHandle, outcome: SynthesisOutcome) -> None:
        handle._finish(outcome)
        self._forget(handle)

    def _complete_failure(self, handle: JobHandle, exc: PoolError) -> None:
        handle._fail(exc)
        self._forget(handle)

    def _forget(self, handle: JobHandle) -> None:
        if handle._timer is not None:
            handle._timer.cancel()
            handle._timer = None
        self._inflight.discard(handle)
        if not self._inflight:
            self._idle.set()

    # -- slots --

    async def _run_slot(self, slot: _Slot) -> None:
        try:
            while not self._closing:
                started = await self._start_process(slot)
                if started:
                    # A worker that loads and reports ready proves the slot healthy again.
                    slot.consecutive_failures = 0
                    slot.failing = False
                    reason = await self._serve(slot)
                    if reason is None:
                        return
                    self._restarts[reason] += 1
                    if reason.startswith("recycle"):
                        continue  # planned: start the replacement at once
                    if reason == "crash":
                        slot.consecutive_failures += 1
                else:
                    slot.consecutive_failures += 1
                    slot.failing = True
                    slot.state = WorkerState.DEAD
                    self._check_startup_error()
                    self._fail_queued_if_no_worker()
                if slot.consecutive_failures >= self._pool.crash_loop_threshold:
                    log.error("worker slot %d failed %d times in a row; still retrying", slot.index,
                              slot.consecutive_failures)
                delay = min(self._pool.restart_backoff_max_s,
                            self._pool.restart_backoff_s * 2 ** max(0, slot.consecutive_failures - 1))
                await asyncio.sleep(delay)
        finally:
            if slot.current is not None:
                self._requeue_or_fail(slot.current)
                slot.current = None

    def _check_startup_error(self) -> None:
        if self._ever_ready.is_set() or self._startup_error is not None:
            return
        if all(s.first_error is not None for s in self._slots):
            self._startup_error = f"no worker could load the engine: {self._slots[0].first_error}"
            log.error("%s", self._startup_error)

    async def _start_process(self, slot: _Slot) -> bool:
        loop = asyncio.get_running_loop()
        slot.state = WorkerState.DEAD if slot.failing else WorkerState.STARTING
        slot.jobs_done = 0
        first = not slot.attempted_start
        slot.attempted_start = True
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main, args=(child_conn, self._settings, slot.index), name=f"tts-worker-{slot.index}",
            daemon=True,
        )
        slot.process, slot.conn = process, parent_conn
        inbox: asyncio.Queue[WorkerMessage | str] = asyncio.Queue()
        slot.inbox = inbox

        def post(msg: WorkerMessage | str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
                loop.call_soon_threadsafe(inbox.put_nowait, msg)

        started = time.perf_counter()
        await loop.run_in_executor(self._executor, process.start)
        child_conn.close()
        slot.pump = loop.run_in_executor(self._executor, _pump, parent_conn, process.sentinel, post)
        msg = await _receive(inbox, self._pool.startup_timeout_s) or "startup timeout"
        if not isinstance(msg, Ready):
            detail = msg.message if isinstance(msg, StartupFailed) else msg
            log.error("worker slot %d failed to start (%s)", slot.index, detail)
            if first and isinstance(msg, StartupFailed):
                slot.first_error = msg.message
            await self._stop_process(slot, graceful=False)
            return False
        slot.load_seconds = msg.load_seconds
        for voice in msg.voices:
            self._voices.setdefault(voice.name, voice)
        slot.seen()
        slot.state = WorkerState.READY
        log.info("worker slot %d ready (pid %s, loaded in %.2fs, startup %.2fs)", slot.index, msg.pid,
                 msg.load_seconds, time.perf_counter() - started)
        self._ever_ready.set()
        return True

    def _heartbeat(self, slot: _Slot) -> float | None:
        """Ping the worker when it has been quiet for an interval. Returns how long the caller may wait before
        the next heartbeat check, or None when the worker has not answered in time (it is hung)."""
        now = time.monotonic()
        if slot.ping_sent_at is None:
            quiet = now - slot.last_seen
            if quiet < self._pool.heartbeat_interval_s:
                return self._pool.heartbeat_interval_s - quiet
            assert slot.conn is not None
            with contextlib.suppress(OSError):  # a dead worker is reported by its reader thread
                slot.conn.send(Ping())
            slot.ping_sent_at = now
            return self._pool.heartbeat_timeout_s
        overdue = now - slot.ping_sent_at
        if overdue >= self._pool.heartbeat_timeout_s:
            return None
        return self._pool.heartbeat_timeout_s - overdue

    async def _serve(self, slot: _Slot) -> str | None:
        """Run jobs on a ready worker until it has to be replaced; returns the restart reason (None = shutdown)."""
        assert slot.process is not None
        process = slot.process
        while True:
            got = await self._next_job(slot)
            if isinstance(got, str):
                return got
            handle = got
            if handle.done:
                continue
            if handle.cancelled:
                self._complete_failure(handle, JobCancelled("client disconnected"))
                continue
            if time.monotonic() >= handle.job.deadline:
                # Expired while queued: never run it.
                self._complete_failure(handle, DeadlineExceeded("deadline exceeded while queued"))
                continue
            reason = await self._run_job(slot, handle)
            if reason is not None:
                return reason
            reason = self._recycle_reason(slot)
            if reason is not None:
                log.info("recycling worker slot %d (pid %s): %s", slot.index, process.pid, reason)
                await self._stop_process(slot, graceful=True)
                return reason

    async def _next_job(self, slot: _Slot) -> JobHandle | str:
        """Wait on an idle worker for a job, keeping up its heartbeat. Returns the job or a restart reason."""
        slot.state = WorkerState.READY
        take: asyncio.Future[JobHandle] | None = None
        try:
            while True:
                wait_s = self._heartbeat(slot)
                if wait_s is None:
                    log.warning("idle worker slot %d (pid %s) stopped answering heartbeats; replacing it",
                                slot.index, slot.pid)
                    await self._stop_process(slot, graceful=False, hung=True)
                    return "timeout"
                if slot.ping_sent_at is not None and take is not None and not take.done():
                    # A job must not go to a worker that has not answered its latest ping.
                    slot.idle_unclaimed = True
                    take.cancel()
                    # Not ``await take`` under suppress(CancelledError): that would also swallow a cancellation
                    # of this task (close()), and the slot would go on serving for ever.
                    await asyncio.wait({take})
                    if not take.cancelled():
                        self._queue.push_front(take.result())
                    take = None
                if take is None and slot.ping_sent_at is None:
                    take = self._queue.getter()
                slot.idle_unclaimed = take is None
                get = asyncio.ensure_future(slot.inbox.get())
                waiting: set[asyncio.Future[object]] = {get} if take is None else {get, take}  # type: ignore[arg-type]
                try:
                    await asyncio.wait(waiting, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not get.done():
                        get.cancel()
                if get.done() and not get.cancelled():
                    msg = get.result()
                    if msg == _DIED:
                        log.warning("idle worker slot %d (pid %s) died", slot.index, slot.pid)
                        await self._stop_process(slot, graceful=False)
                        return "crash"
                    slot.seen()
                    if not isinstance(msg, Pong):
                        log.debug("stale %s from idle slot %d", type(msg).__name__, slot.index)
                if take is not None and take.done():
                    handle = take.result()
                    take = None
                    return handle
        finally:
            slot.idle_unclaimed = False
            if take is not None:
                if take.done() and not take.cancelled():
                    self._queue.push_front(take.result())
                else:
                    take.cancel()

    async def _run_job(self, slot: _Slot, handle: JobHandle) -> str | None:
        """Run one job on the slot's worker. Returns a restart reason when the worker had to go."""
        assert slot.conn is not None
        now = time.monotonic()
        slot.state = WorkerState.BUSY
        slot.current = handle
        handle.attempts += 1
        if handle.started_at is None:
            handle.started_at = now
        try:
            slot.conn.send(handle.job)
        except OSError:
            return await self._worker_lost(slot, handle, "crash")
        job_id = handle.job.job_id
        while True:
            wait_s = self._heartbeat(slot)
            if wait_s is None:
                log.warning("busy worker slot %d (pid %s) stopped answering heartbeats running job %d "
                            "(request %s); replacing it", slot.index, slot.pid, job_id, handle.job.request_id)
                return await self._worker_lost(slot, handle, "timeout")
            remaining = handle.job.deadline - time.monotonic()
            if remaining <= 0:
                slot.current = None
                log.warning("job %d (request %s) ran past its deadline on slot %d; replacing the worker",
                            job_id, handle.job.request_id, slot.index)
                self._complete_failure(handle, DeadlineExceeded("deadline exceeded while running"))
                await self._stop_process(slot, graceful=False)
                return "timeout"
            msg = await _receive(slot.inbox, min(wait_s, remaining))
            if msg is None:
                continue
            if msg == _DIED:
                return await self._worker_lost(slot, handle, "crash")
            slot.seen()
            if isinstance(msg, Chunk):
                if msg.job_id == job_id and not handle.cancelled:
                    handle._deliver_chunk(msg)
                continue
            if isinstance(msg, (Result, Failure, Cancelled)) and msg.job_id == job_id:
                break
            if not isinstance(msg, Pong):
                log.error("unexpected message %r from slot %d", type(msg).__name__, slot.index)
        slot.current = None
        slot.jobs_done += 1
        if isinstance(msg, Result):
            if handle.job.kind == "synthesize":  # a preview's milliseconds would skew the Retry-After estimate
                self._record_service_time(msg.inference_seconds)
            assert handle.started_at is not None
            self._complete(handle, SynthesisOutcome(
                audio=msg.audio, sample_rate=msg.sample_rate, audio_seconds=msg.audio_seconds,
                queue_wait_seconds=handle.started_at - handle.admitted_at,
                inference_seconds=msg.inference_seconds, stage_seconds=dict(msg.stage_seconds),
                attempts=handle.attempts, preview=msg.preview, timestamps=msg.timestamps,
            ))
        elif isinstance(msg, Cancelled):
            self._complete_failure(handle, JobCancelled("client disconnected"))
        elif msg.expired:
            self._complete_failure(handle, DeadlineExceeded("deadline exceeded before start"))
        else:
            self._complete_failure(handle, JobFailed(msg.message, msg.param, msg.client_error))
        slot.state = WorkerState.READY
        return None

    async def _worker_lost(self, slot: _Slot, handle: JobHandle, reason: str) -> str:
        slot.current = None
        log.warning("worker slot %d (pid %s) %s running job %d (request %s)", slot.index, slot.pid,
                    "died" if reason == "crash" else "hung", handle.job.job_id, handle.job.request_id)
        self._requeue_or_fail(handle)
        await self._stop_process(slot, graceful=False, hung=reason == "timeout")
        return reason

    def _requeue_or_fail(self, handle: JobHandle) -> None:
        if handle.done:
            return
        if handle.cancelled:
            self._complete_failure(handle, JobCancelled("client disconnected"))
        elif self._closing:
            self._complete_failure(handle, NotReady(1, "server shutting down"))
        elif time.monotonic() >= handle.job.deadline:
            self._complete_failure(handle, DeadlineExceeded("deadline exceeded"))
        elif handle.attempts < MAX_ATTEMPTS and handle.chunks_delivered == 0:
            # TTS is idempotent: run it again elsewhere. Not once audio went out, or the client would hear it twice.
            self._queue.push_front(handle)
            self._fail_queued_if_no_worker()
        else:
            self._complete_failure(handle, WorkerCrashed("worker died while synthesizing", handle.attempts))

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

    async def _stop_process(self, slot: _Slot, *, graceful: bool, hung: bool = False) -> None:
        process, conn = slot.process, slot.conn
        if process is None:
            return
        loop = asyncio.get_running_loop()
        if hung and process.pid is not None and process.exitcode is None:
            # It answers nothing, SIGTERM included (a stopped process only queues it): don't wait for it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
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
        if slot.pump is not None:
            # The reader thread ends once the process has; let it go before its descriptors are closed.
            await asyncio.wait({slot.pump}, timeout=2.0)
            slot.pump = None
        if conn is not None:
            conn.close()
        with contextlib.suppress(ValueError):
            process.close()
        slot.process, slot.conn = None, None
        if self._closing:
            slot.state = WorkerState.STOPPED
        else:
            slot.state = WorkerState.DEAD if slot.failing else WorkerState.STARTING
