"""Worker process: loads one engine, warms it up, then runs jobs sent over its pipe until told to stop."""

from __future__ import annotations

import logging
import os
import signal
import time
from multiprocessing.connection import Connection

import numpy as np

from tts_server.config import Settings
from tts_server.inference.engine import EngineError, Synthesis
from tts_server.inference.loading import load_engine
from tts_server.inference.messages import Chunk, Failure, Job, Ready, Result, Shutdown, StartupFailed

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
    try:
        engine = load_engine(settings)
        engine.warm_up()
        voices = tuple(engine.voices().values())
    except Exception as exc:  # any load failure must reach the parent as a message, not a silent exit
        log.exception("engine failed to load")
        conn.send(StartupFailed(message=f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    conn.send(Ready(pid=os.getpid(), load_seconds=time.perf_counter() - started, voices=voices))

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if isinstance(msg, Shutdown):
            conn.close()
            return
        if not isinstance(msg, Job):
            log.error("unexpected message %s", type(msg).__name__)
            continue
        conn.send(_run(engine, msg, conn))


def _run(engine: object, job: Job, conn: Connection) -> Result | Failure:
    from tts_server.inference.engine import Engine

    assert isinstance(engine, Engine)
    if time.monotonic() >= job.deadline:
        return Failure(job.job_id, "deadline exceeded before start", None, client_error=False, expired=True)
    started = time.perf_counter()
    stages: dict[str, float] = {}
    try:
        if job.stream:
            audio_seconds = 0.0
            sample_rate = 0
            pieces = engine.synthesize_stream(
                job.text, job.voice, job.emotion, job.speed, input_format=job.input_format
            )
            for seq, piece in enumerate(pieces):
                _add_stages(stages, piece)
                sample_rate = piece.sample_rate
                audio_seconds += len(piece.audio) / piece.sample_rate
                conn.send(Chunk(job.job_id, seq, np.ascontiguousarray(piece.audio, np.float32), piece.sample_rate))
            audio = _EMPTY
        else:
            syn = engine.synthesize(job.text, job.voice, job.emotion, job.speed, input_format=job.input_format)
            _add_stages(stages, syn)
            audio = np.ascontiguousarray(syn.audio, np.float32)
            sample_rate = syn.sample_rate
            audio_seconds = len(audio) / sample_rate
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
    )


def _add_stages(total: dict[str, float], syn: Synthesis) -> None:
    for stage, seconds in syn.stage_seconds.items():
        total[stage] = total.get(stage, 0.0) + seconds
