"""The naive deployment the pool is compared against: one model copy behind a thread-per-request HTTP server,
with a lock around the model (what a Flask/gunicorn-style synchronous TTS service amounts to).

    python bench/naive.py --port 8001 [--engine sambert|module:factory] [--model-dir DIR] [--threads N]

It speaks just enough of tts-server's API for the load generator: ``POST /v1/synthesize`` (JSON in, audio out,
``X-Audio-Duration``) and ``GET /health``. There is no admission control, no deadline and no isolation: requests
simply wait for the lock, however many there are.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def build_handler(engine: Any, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    from tts_server.inference.audio import encode

    voices = engine.voices()
    default_voice = next(iter(voices))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real server

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                body = json.dumps({"status": "ok", "workers": {"ready": 1}}).encode()
                self._reply(200, body, "application/json")
            else:
                self._reply(404, b"{}", "application/json")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            try:
                req = json.loads(self.rfile.read(length))
                voice = req.get("voice") or default_voice
                emotion = req.get("emotion") or voices[voice].default_emotion
                fmt = req.get("format", "wav")
                with lock:
                    result = engine.synthesize(req["text"], voice, emotion, float(req.get("speed", 1.0)))
                audio = encode(result.audio, result.sample_rate, fmt)
            except Exception as exc:
                self._reply(500, json.dumps({"error": str(exc)}).encode(), "application/json")
                return
            self._reply(200, audio, "audio/wav" if fmt == "wav" else "audio/L16",
                        {"X-Audio-Duration": f"{len(result.audio) / result.sample_rate:.3f}",
                         "X-Sample-Rate": str(result.sample_rate)})

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--engine", default="sambert")
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the one model copy")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(REPO), str(REPO / "src")]
    from tts_server.config import load_settings
    from tts_server.inference.loading import load_engine

    model: dict[str, Any] = {"torch_threads": args.threads}
    if args.model_dir:
        model["model_dir"] = str(args.model_dir)
    t0 = time.perf_counter()
    engine = load_engine(load_settings(None, engine={"name": args.engine}, model=model))
    engine.warm_up()
    print(f"naive server: engine {args.engine} loaded in {time.perf_counter() - t0:.1f}s", flush=True)
    # A backlog like gunicorn's (2048): the stdlib default of 5 would reset connections under a burst, which
    # would be a flaw of this harness rather than of the design being compared.
    ThreadingHTTPServer.request_queue_size = 2048
    server = ThreadingHTTPServer(("127.0.0.1", args.port), build_handler(engine, threading.Lock()))
    server.daemon_threads = True
    import signal

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
