"""Command line: ``tts-server serve | voices | synth``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tts_server.config import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "model_dir", None):
        overrides.setdefault("model", {})["model_dir"] = str(args.model_dir)
    if getattr(args, "threads", None):
        overrides.setdefault("model", {})["torch_threads"] = args.threads
    return load_settings(args.config, **overrides)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tts_server.api.app import create_app

    settings = _settings(args)
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    logging.basicConfig(level=settings.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One uvicorn process: the worker pool is the parallelism, and the pool must have exactly one owner.
    uvicorn.run(
        create_app(settings), host=host, port=port, log_level=settings.server.log_level,
        timeout_graceful_shutdown=int(settings.server.drain_timeout_s), access_log=False,
    )
    return 0


def _voices(args: argparse.Namespace) -> int:
    from tts_server.inference.engine import load_engine

    engine = load_engine(_settings(args))
    for voice in engine.voices().values():
        print(json.dumps({"name": voice.name, "emotions": list(voice.emotions),
                          "default_emotion": voice.default_emotion, "sample_rate": voice.sample_rate},
                         ensure_ascii=False))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from tts_server.inference.audio import FORMATS, encode
    from tts_server.inference.engine import EngineError, load_engine

    engine = load_engine(_settings(args))
    voices = engine.voices()
    voice = args.voice or next(iter(voices))
    if voice not in voices:
        print(f"unknown voice {voice!r}; available: {', '.join(voices)}", file=sys.stderr)
        return 2
    emotion = args.emotion or voices[voice].default_emotion
    try:
        result = engine.synthesize(args.text, voice, emotion, args.speed)
    except EngineError as exc:
        print(f"error: {exc.public_message}", file=sys.stderr)
        return 2
    fmt = args.format or (args.output.suffix.lstrip(".") if args.output.suffix.lstrip(".") in FORMATS else "wav")
    args.output.write_bytes(encode(result.audio, result.sample_rate, fmt))
    print(f"wrote {args.output} ({len(result.audio) / result.sample_rate:.2f}s, {result.sample_rate} Hz, {fmt})")
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
    synth.add_argument("--format", choices=["wav", "pcm", "flac", "mp3", "ogg", "opus"])
    synth.add_argument("--model-dir", type=Path, help="local model directory (published layout)")
    synth.add_argument("--threads", type=int, help="torch threads")
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
