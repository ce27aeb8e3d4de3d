"""Worker process: loads one engine, warms it up, then runs jobs sent over its pipe until told to stop.

A reader thread owns the receiving end of the pipe so that the worker answers heartbeats (``Ping``) and takes note of
``Cancel`` while the main thread synthesises; jobs go to the main thread through a local queue.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from tts_server.config import Settings
from tts_server.inference.engine import EngineError, SupportsLexicon, Synthesis
from tts_server.inference.lexicon import LexiconError, read_file
from tts_server.inference.loading import load_engine
from tts_server.inference.memory import keep_heap_pages, limit_primitive_cache, release_free_memory
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
)
from tts_server.inference.timestamps import TimestampBuilder, build

log = logging.getLogger("tts_server.worker")

_EMPTY = np.zeros(0, dtype=np.float32)


def worker_main(conn: Connection, settings: Settings, slot: int) -> None:
    """Entry point of a spawned worker process."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop (after draining).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker[{slot}] %(name)s: %(message)s",
    )
    started = time.perf_counter()
    release = settings.pool.release_memory
    limit_primitive_cache(settings.pool.onednn_primitive_cache)  # before torch loads: it reads this once
    keep_heap_pages()  # back-to-back jobs reuse warm heap pages; the idle trim below still returns them
    try:
        engine = load_engine(settings)
        engine.warm_up()
        voices = tuple(engine.voices().values())
    except Exception as exc:  # any load failure must reach the parent as a message, not a silent exit
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        # One line at error level (it ends up as the reason ``serve`` exits with); the traceback for debugging.
        log.error("engine failed to load: %s", message, exc_info=log.isEnabledFor(logging.DEBUG))
        conn.send(StartupFailed(message=message))
        conn.close()
        return
    send_lock = threading.Lock()

    def send(msg: object) -> None:
        with send_lock:  # the reader thread answers pings while the main thread sends chunks
            conn.send(msg)

    if release:
        release_free_memory()  # loading and warm-up leave tens of MB of freed buffers in the heaps
    send(Ready(pid=os.getpid(), load_seconds=time.perf_counter() - started, voices=voices))
    jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
    cancelled: set[int] = set()
    threading.Thread(target=_read_pipe, args=(conn, send, jobs, cancelled), name="tts-pipe", daemon=True).start()
    lexicon_version = -1  # none loaded yet: the first job reads the file (a recycled worker too)
    while True:
        job = jobs.get()
        if job is None:
            return  # Shutdown, or the parent is gone
        if job.lexicon_version > lexicon_version and settings.lexicon.path is not None:
            lexicon_version = _load_lexicon(engine, settings.lexicon.path, lexicon_version)
        send(_run(engine, job, send, cancelled))
        # Only the running job is ever cancelled: a Cancel for it or an older job (one that crossed its Result) is
        # stale now. Not clear(): the reader thread may already have noted a Cancel for the job queued next.
        cancelled.difference_update([i for i in list(cancelled) if i <= job.job_id])
        if release and jobs.empty():
            release_free_memory()  # idle now: hand back what this job's buffers left in the heaps


def _load_lexicon(engine: object, path: Path, current: int) -> int:
    """Re-read the lexicon file into the engine; the version now in effect. A file that cannot be read (the API
    process validated it and replaces it atomically, so this means an operator edit) keeps the old lexicon."""
    try:
        lexicon = read_file(path)
    except LexiconError as exc:
        log.error("keeping lexicon version %d: %s", current, exc.message)
        return current
    if isinstance(engine, SupportsLexicon):
        engine.set_lexicon(lexicon.entries)
    log.info("lexicon version %d loaded (%d entries)", lexicon.version, len(lexicon.entries))
    return lexicon.version


def _read_pipe(conn: Connection, send: Callable[[object], None], jobs: queue.SimpleQueue[Job | None],
               cancelled: set[int]) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            jobs.put(None)
            return
        if isinstance(msg, Ping):
            try:
                send(Pong())
            except OSError:
                jobs.put(None)
                return
        elif isinstance(msg, Cancel):
            cancelled.add(msg.job_id)
        elif isinstance(msg, Job):
            jobs.put(msg)
        elif isinstance(msg, Shutdown):
            jobs.put(None)
            return
        else:
            log.error("unexpected message %s", type(msg).__name__)


def _run(engine: object, job: Job, send: Callable[[object], None],
         cancelled: set[int]) -> Result | Failure | Cancelled:
    from tts_server.inference.engine import Engine

    assert isinstance(engine, Engine)
    if time.monotonic() >= job.deadline:
        return Failure(job.job_id, "deadline exceeded before start", None, client_error=False, expired=True)
    started = time.perf_counter()
    stages: dict[str, float] = {}
    timestamps = ""
    try:
        if job.kind == "preview":
            if not isinstance(engine, SupportsLexicon):
                return Failure(job.job_id, "this engine has no text frontend to preview", None, client_error=True)
            view = engine.preview(job.text, job.voice, input_format=job.input_format)
            return Result(job.job_id, _EMPTY, 0, 0.0, time.perf_counter() - started, (),
                          preview=json.dumps(view, ensure_ascii=False))
        if job.stream:
            audio_seconds = 0.0
            sample_rate = 0
            pieces = engine.synthesize_stream(
                job.text, job.voice, job.emotion, job.speed, input_format=job.input_format, **_prosody(job)
            )
            builder: TimestampBuilder | None = None
            for seq, piece in enumerate(pieces):
                _add_stages(stages, piece)
                sample_rate = piece.sample_rate
                audio_seconds += len(piece.audio) / piece.sample_rate
                events = ""
                if job.timestamps:
                    if builder is None:
                        if not piece.timings:
                            return _no_timings(job)
                        builder = TimestampBuilder(job.text, piece.sample_rate)
                    if piece.timings:
                        events = json.dumps([builder.add(t) for t in piece.timings], ensure_ascii=False)
                send(Chunk(job.job_id, seq, np.ascontiguousarray(piece.audio, np.float32), piece.sample_rate,
                           events))
                if job.job_id in cancelled:
                    # The client went away: stop before the next sentence and stay in service.
                    return Cancelled(job.job_id)
            audio = _EMPTY
        else:
            syn = engine.synthesize(
                job.text, job.voice, job.emotion, job.speed, input_format=job.input_format, **_prosody(job)
            )
            _add_stages(stages, syn)
            audio = np.ascontiguousarray(syn.audio, np.float32)
            sample_rate = syn.sample_rate
            audio_seconds = len(audio) / sample_rate
            if job.timestamps:
                if not syn.timings:
                    return _no_timings(job)
                document = build(job.text, sample_rate, syn.timings)
                if round(document["duration_ms"] * sample_rate / 1000) != len(audio):
                    log.error("job %s: timings cover %.3f ms, the audio is %d samples", job.job_id,
                              document["duration_ms"], len(audio))
                timestamps = json.dumps(document, ensure_ascii=False)
    except EngineError as exc:
        return Failure(job.job_id, exc.public_message, exc.param, client_error=exc.client_error)
    except Exception:
        log.exception("job %s (request %s) failed", job.job_id, job.request_id)
        return Failure(job.job_id, "synthesis failed", None, client_error=False)
    return Result(
        job_id=job.job_id,
        audio=audio,
        sample_rate=sample_rate,
        audio_seconds=audio_seconds,
        inference_seconds=time.perf_counter() - started,
        stage_seconds=tuple(sorted(stages.items())),
        timestamps=timestamps,
    )


def _no_timings(job: Job) -> Failure:
    return Failure(job.job_id, "this engine does not report timestamps", "timestamps", client_error=True)


def _add_stages(total: dict[str, float], syn: Synthesis) -> None:
    for stage, seconds in syn.stage_seconds.items():
        total[stage] = total.get(stage, 0.0) + seconds


def _prosody(job: Job) -> dict[str, Any]:
    # Only non-default values are passed, so an engine written before these keywords keeps working unchanged.
    out: dict[str, Any] = {}
    if job.pitch != 0.0:
        out["pitch"] = job.pitch
    if job.volume_db != 0.0:
        out["volume_db"] = job.volume_db
    if job.seed is not None:
        out["seed"] = job.seed
    return out
