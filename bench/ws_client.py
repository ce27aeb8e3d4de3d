"""A small client for the WebSocket ``/v1/tts/ws``: streams a text file in deltas, as an LLM would, and reports the
time to first audio; writes the audio as a WAV file.

    .venv/bin/python bench/ws_client.py text.txt [-o out.wav] [--url ws://127.0.0.1:8000/v1/tts/ws]
        [--key KEY] [--voice V] [--emotion E] [--speed 1.0] [--sample-rate HZ]
        [--delta-chars 3] [--delta-interval-ms 0] [--json report.json]

Time to first audio is measured from the first text delta sent to the first binary frame received; each clause's
line shows when it started, when its first audio arrived and its audio length, all from that same origin. With
``--delta-interval-ms`` the deltas are paced like a token stream (e.g. 30 ms per 3 characters); at 0 they go out
as fast as the socket takes them. The protocol is in README.md ("WebSocket").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

DEFAULT_URL = "ws://127.0.0.1:8000/v1/tts/ws"


@dataclass
class Clause:
    index: int
    text: str
    started_s: float
    first_audio_s: float | None = None
    samples: int = 0


@dataclass
class Report:
    sample_rate: int = 0
    first_audio_s: float | None = None
    wall_s: float = 0.0
    audio: bytearray = field(default_factory=bytearray)
    clauses: list[Clause] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / 2 / self.sample_rate if self.sample_rate else 0.0

    def summary(self) -> dict[str, Any]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000, 1)

        return {
            "time_to_first_audio_ms": ms(self.first_audio_s),
            "wall_ms": ms(self.wall_s),
            "audio_seconds": round(self.audio_seconds, 3),
            "sample_rate": self.sample_rate,
            "close_code": self.close_code,
            "error": next((e for e in self.events if e["type"] == "error"), None),
            "clauses": [{"index": c.index, "text": c.text, "started_ms": ms(c.started_s),
                         "first_audio_ms": ms(c.first_audio_s), "audio_seconds": round(c.samples / self.sample_rate, 3)}
                        for c in self.clauses],
        }


async def stream_text(url: str, text: str, *, key: str | None = None, start: dict[str, Any] | None = None,
                      delta_chars: int = 3, delta_interval_s: float = 0.0) -> Report:
    """Run one session: ``start``, ``text`` in deltas of ``delta_chars``, ``close``; collect what comes back."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    report = Report()
    async with connect(url, additional_headers=headers, max_size=2 ** 22) as ws:
        await ws.send(json.dumps({"type": "start", **(start or {})}))
        ready = json.loads(await ws.recv())
        report.events.append(ready)
        if ready["type"] != "ready":
            await _drain(ws, report, time.perf_counter())
            return report
        report.sample_rate = ready["sample_rate"]
        origin = time.perf_counter()

        async def send_all() -> None:
            with_close = True
            try:
                for i in range(0, len(text), delta_chars):
                    await ws.send(json.dumps({"type": "text", "text": text[i:i + delta_chars]}, ensure_ascii=False))
                    if delta_interval_s:
                        await asyncio.sleep(delta_interval_s)
            except ConnectionClosed:
                with_close = False  # the server ended the session (an error event says why)
            if with_close:
                await ws.send(json.dumps({"type": "close"}))

        sender = asyncio.create_task(send_all())
        try:
            await _drain(ws, report, origin)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    return report


async def _drain(ws: Any, report: Report, origin: float) -> None:
    current: Clause | None = None
    try:
        async for message in ws:
            now = time.perf_counter() - origin
            if isinstance(message, bytes):
                if report.first_audio_s is None:
                    report.first_audio_s = now
                report.audio += message
                if current is not None:
                    if current.first_audio_s is None:
                        current.first_audio_s = now
                    current.samples += len(message) // 2
                continue
            event = json.loads(message)
            report.events.append(event)
            if event["type"] == "clause_started":
                current = Clause(event["index"], event["text"], now)
                report.clauses.append(current)
    except ConnectionClosed:
        pass
    report.wall_s = time.perf_counter() - origin
    report.close_code = ws.close_code


def write_wav(path: Path, pcm: bytes, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text_file", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("ws_out.wav"))
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--key", help="API key (sent as the upgrade's Authorization header)")
    parser.add_argument("--voice")
    parser.add_argument("--emotion")
    parser.add_argument("--speed", type=float)
    parser.add_argument("--sample-rate", type=int)
    parser.add_argument("--delta-chars", type=int, default=3)
    parser.add_argument("--delta-interval-ms", type=float, default=0.0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.delta_chars < 1:
        parser.error("--delta-chars must be at least 1")
    start = {k: v for k, v in {"voice": args.voice, "emotion": args.emotion, "speed": args.speed,
                               "sample_rate": args.sample_rate}.items() if v is not None}
    text = args.text_file.read_text(encoding="utf-8")
    report = asyncio.run(stream_text(args.url, text, key=args.key, start=start, delta_chars=args.delta_chars,
                                     delta_interval_s=args.delta_interval_ms / 1000))
    summary = report.summary()
    for c in summary["clauses"]:
        print(f"clause {c['index']:3d}  started {c['started_ms']:8.1f} ms  first audio {c['first_audio_ms']} ms  "
              f"{c['audio_seconds']:6.2f} s  {c['text']}")
    print(f"time to first audio: {summary['time_to_first_audio_ms']} ms; {summary['audio_seconds']} s of audio in "
          f"{summary['wall_ms']} ms; close code {summary['close_code']}")
    if summary["error"] is not None:
        print(f"error: {summary['error']}", file=sys.stderr)
    if report.audio:
        write_wav(args.output, bytes(report.audio), report.sample_rate)
        print(f"wrote {args.output}")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0 if report.close_code == 1000 else 1


if __name__ == "__main__":
    raise SystemExit(main())
