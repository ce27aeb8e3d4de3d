"""Command line: ``tts-server serve | voices | synth``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tts_server.config import ConfigError, Settings, load_settings
from tts_server.inference.engine import INPUT_FORMATS

if TYPE_CHECKING:
    from tts_server.inference.engine import Engine

log = logging.getLogger("tts_server.cli")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "model_dir", None):
        overrides.setdefault("model", {})["model_dir"] = str(args.model_dir)
    if getattr(args, "threads", None):
        overrides.setdefault("model", {})["torch_threads"] = args.threads
    return load_settings(args.config, **overrides)


def _serve(args: argparse.Namespace) -> int:
    # The server's libraries are imported here, not with this module: every spawned worker re-imports the
    # ``tts-server`` script's module (multiprocessing's spawn runs the parent's main module), and uvicorn, FastAPI
    # and prometheus_client cost it ~10 MiB it never uses.
    import prometheus_client
    import uvicorn

    from tts_server.api.app import create_app
    from tts_server.api.draining import DrainingServer
    from tts_server.api.server import bind_listener, guarded_protocol

    settings = _settings(args)
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    logging.basicConfig(level=settings.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Bind first: a port in use is one line and an exit status, before any worker is spawned.
    try:
        sock = bind_listener(host, port)
    except OSError as exc:
        print(f"tts-server: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 3
    # The server process owns its metrics: drop the *_created companion series (a timestamp per series that
    # doubles the scrape size and that no dashboard or alert reads).
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    app = create_app(settings)
    # One uvicorn process: the worker pool is the parallelism, and the pool must have exactly one owner.
    # uvicorn's access log stays off: ours has the request id and sees the same requests.
    config = uvicorn.Config(
        app, host=host, port=port, log_level=settings.server.log_level,
        timeout_graceful_shutdown=math.ceil(settings.server.drain_timeout_s), access_log=False,
        http=guarded_protocol(settings.server),
        # Pinned like http=: the sans-I/O implementation of the websockets package (uvicorn deprecates its legacy
        # one), whatever else is installed; messages over websocket.max_message_bytes close with 1009.
        ws="websockets-sansio", ws_max_size=settings.websocket.max_message_bytes,
    )
    server = DrainingServer(config, app, settings.server.drain_delay_s)
    log.info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, sock.getsockname()[1])
    with sock:
        server.run(sockets=[sock])
    if server.fatal is not None:
        print(f"tts-server: {server.fatal}", file=sys.stderr)
        return 4
    if not server.started:
        return 3  # the app failed to start; uvicorn logged why
    return 0


#: Exit status when the engine cannot be loaded (2 is a configuration or input error, like argparse's).
EXIT_LOAD_FAILED = 3


def _load_engine(args: argparse.Namespace) -> Engine | None:
    """The configured engine, or None after one line on stderr saying why it cannot be loaded: a missing or
    damaged model is an operator error to fix, not a crash to debug from a traceback."""
    from tts_server.inference.engine import EngineLoadError
    from tts_server.inference.loading import load_engine

    settings = _settings(args)
    try:
        return load_engine(settings)
    except EngineLoadError as exc:
        message = " ".join(str(exc).splitlines())
        print(f"error: cannot load the model: {message}", file=sys.stderr)
        return None


def _voices(args: argparse.Namespace) -> int:
    engine = _load_engine(args)
    if engine is None:
        return EXIT_LOAD_FAILED
    for voice in engine.voices().values():
        print(json.dumps({"name": voice.name, "emotions": list(voice.emotions),
                          "default_emotion": voice.default_emotion, "sample_rate": voice.sample_rate},
                         ensure_ascii=False))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from tts_server.inference.audio import FORMATS, encode
    from tts_server.inference.engine import EngineError

    engine = _load_engine(args)
    if engine is None:
        return EXIT_LOAD_FAILED
    voices = engine.voices()
    voice = args.voice or next(iter(voices))
    if voice not in voices:
        print(f"unknown voice {voice!r}; available: {', '.join(voices)}", file=sys.stderr)
        return 2
    emotion = args.emotion or voices[voice].default_emotion
    try:
        result = engine.synthesize(args.text, voice, emotion, args.speed, input_format=args.input_format)
    except EngineError as exc:
        print(f"error: {exc.public_message}", file=sys.stderr)
        return 2
    if (args.timestamps is not None or args.plot is not None) and not result.timings:
        print("error: this engine does not report timestamps", file=sys.stderr)
        return 2
    fmt = args.format or (args.output.suffix.lstrip(".") if args.output.suffix.lstrip(".") in FORMATS else "wav")
    args.output.write_bytes(encode(result.audio, result.sample_rate, fmt))
    print(f"wrote {args.output} ({len(result.audio) / result.sample_rate:.2f}s, {result.sample_rate} Hz, {fmt})")
    if args.timestamps is None and args.plot is None:
        return 0
    from tts_server.inference.timestamps import build

    document = build(args.text, result.sample_rate, result.timings)
    if args.plot is not None:
        try:
            from tts_server.plot import plot_synthesis

            plot_synthesis(args.plot, result.audio, result.sample_rate, document)
        except ImportError:
            print("error: --plot needs matplotlib: pip install 'tts-server[plot]'", file=sys.stderr)
            return 2
        print(f"wrote {args.plot}")
    if args.timestamps is not None:
        args.timestamps.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.timestamps} ({len(document['sentences'])} sentences, {len(document['words'])} words, "
              f"{len(document['syllables'])} syllables, {len(document['marks'])} marks)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tts-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="TOML settings file (TTS_* environment variables override it)")

    serve = sub.add_parser("serve", help="run the HTTP server")
    common(serve)
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.set_defaults(func=_serve)

    voices = sub.add_parser("voices", help="list voices and emotions of the configured model")
    common(voices)
    voices.add_argument("--model-dir", type=Path, help="local model directory (published layout)")
    voices.set_defaults(func=_voices)

    synth = sub.add_parser("synth", help="synthesise one text in-process (no server)")
    common(synth)
    synth.add_argument("text")
    synth.add_argument("-o", "--output", type=Path, required=True)
    synth.add_argument("--voice")
    synth.add_argument("--emotion")
    synth.add_argument("--speed", type=float, default=1.0)
    synth.add_argument("--input-format", choices=INPUT_FORMATS, default="text",
                       help="how TEXT is read: plain text, an SSML document, or KAN-TTS symbol strings")
    synth.add_argument("--format", choices=["wav", "pcm", "flac", "mp3", "ogg", "opus"])
    synth.add_argument("--model-dir", type=Path, help="local model directory (published layout)")
    synth.add_argument("--threads", type=int, help="torch threads")
    synth.add_argument("--timestamps", type=Path, metavar="OUT.json",
                       help="also write the start and end (ms) of every sentence, word, syllable and character, and "
                            "the SSML marks, as JSON (the shape of the API's timestamps answer, without the audio)")
    synth.add_argument("--plot", type=Path, metavar="OUT.png",
                       help="also draw the waveform and log-mel spectrogram with the syllable boundaries labelled in "
                            "pinyin (needs matplotlib: the 'plot' extra)")
    synth.set_defaults(func=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
