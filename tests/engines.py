"""Small deterministic engines for tests (loaded in worker processes via ``engine.name = "tests.engines:..."``).

Directives in the text steer the fault cases, e.g. ``"[sleep=0.5] 你好"``:
- ``sleep=S``: sleep S seconds per sentence before returning audio (a slow job);
- ``fail``: raise an EngineError (the input is "bad");
- ``boom``: raise a plain exception (an engine bug -> 500 without internals);
- ``exit``: the worker process dies abruptly (os._exit) on its first attempt at this job;
- ``leak=MB``: keep MB megabytes alive forever (memory growth);
- ``hold``: once logged, wait while the file named by ``TTS_TEST_HOLD_FILE`` exists (``tests.conftest.Hold``,
  the ``hold`` fixture), so a test keeps a worker busy until it releases the gate, however slowly a loaded machine
  runs its awaits (a ``sleep`` job may end before the test has done what needed the worker busy).
Every job that runs appends ``pid<TAB>text`` (text backslash-escaped) to the file named by ``TTS_TEST_ENGINE_LOG``
(if set), so tests can check what ran and where; a job whose ``input_format`` is not ``text`` logs
``pid<TAB>format<TAB>text``; a job with a non-default pitch or volume is logged with
``pitch=P volume_db=V<TAB>`` before the format (or text). Volume is applied with the real gain (``apply_gain``),
pitch raises the tone by P semitones (any audible, deterministic change will do for a test engine). A job with a
``seed`` is logged with ``seed=N<TAB>`` in front of all that. ``stochastic_engine`` adds a personal voice ``gamma``
whose audio carries random noise (like an NSF excitation), fixed by the seed when there is one.
``input_format="ssml"`` must be a well-formed ``<speak>`` document (no DTD) and speaks its text content;
``input_format="symbols"`` must be ``{...}`` tokens. Otherwise the engine refuses it as a client error, like the
real engine.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping

import defusedxml
import defusedxml.ElementTree as SafeET
import numpy as np

from tts_server.config import Settings
from tts_server.inference.audio import apply_gain
from tts_server.inference.engine import INPUT_FORMATS, EngineError, InputFormat, Synthesis, VoiceInfo

SAMPLE_RATE = 16000
#: Seconds of audio per character at speed 1.0.
SECONDS_PER_CHAR = 0.01

VOICES = {
    "alpha": VoiceInfo("alpha", ("neutral", "happy", "sad"), "neutral", SAMPLE_RATE),
    "beta": VoiceInfo("beta", ("neutral", "angry"), "neutral", SAMPLE_RATE),
}
STOCHASTIC_VOICES = {
    **VOICES,
    "gamma": VoiceInfo("gamma", ("neutral",), "neutral", SAMPLE_RATE, kind="personal", stochastic=True),
}

_DIRECTIVE = re.compile(r"\[([a-z]+)(?:=([0-9.]+))?\]")
_LEAKED: list[bytearray] = []


class ToneEngine:
    """Speaks a sine tone whose pitch depends on voice and emotion and whose length depends on the text."""

    def __init__(self, settings: Settings, voices: Mapping[str, VoiceInfo] = VOICES) -> None:
        self.settings = settings
        self.warmed = False
        self._voices = voices

    def voices(self) -> Mapping[str, VoiceInfo]:
        return self._voices

    def warm_up(self) -> None:
        self.synthesize("warm up", "alpha", "neutral", 1.0)
        self.warmed = True

    def synthesize(
        self, text: str, voice: str, emotion: str, speed: float, *, input_format: InputFormat = "text",
        pitch: float = 0.0, volume_db: float = 0.0, seed: int | None = None,
    ) -> Synthesis:
        pieces = list(self.synthesize_stream(
            text, voice, emotion, speed, input_format=input_format, pitch=pitch, volume_db=volume_db, seed=seed
        ))
        audio = np.concatenate([p.audio for p in pieces]).astype(np.float32)
        stages: dict[str, float] = {}
        for p in pieces:
            for k, v in p.stage_seconds.items():
                stages[k] = stages.get(k, 0.0) + v
        return Synthesis(audio, SAMPLE_RATE, stages)

    def synthesize_stream(
        self, text: str, voice: str, emotion: str, speed: float, *, input_format: InputFormat = "text",
        pitch: float = 0.0, volume_db: float = 0.0, seed: int | None = None,
    ) -> Iterator[Synthesis]:
        voices = self._voices
        if input_format not in INPUT_FORMATS:
            raise EngineError(f"unknown input_format {input_format!r}", param="input_format")
        if voice not in voices:
            raise EngineError(f"unknown voice {voice!r}", param="voice")
        if emotion not in voices[voice].emotions:
            raise EngineError(f"unknown emotion {emotion!r}", param="emotion")
        logged = text if input_format == "text" else f"{input_format}\t{text}"
        if pitch != 0.0 or volume_db != 0.0:
            logged = f"pitch={pitch:g} volume_db={volume_db:g}\t{logged}"
        if seed is not None:
            logged = f"seed={seed}\t{logged}"
        # One generator per request, as in the real engine: a seed fixes the whole audio.
        rng = np.random.default_rng(seed) if voices[voice].stochastic else None
        self._log(logged)
        if input_format == "ssml":
            text = _ssml_text(text)
        elif input_format == "symbols" and not text.lstrip().startswith("{"):
            raise EngineError("not a symbol string", param="text")
        directives = dict(_DIRECTIVE.findall(text))
        if "exit" in directives and self.warmed:
            marker = os.environ.get("TTS_TEST_ENGINE_LOG", "") + ".exited"
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(17)
        if "fail" in directives:
            raise EngineError("the test engine refuses this text", param="text")
        if "boom" in directives:
            raise RuntimeError("secret internal detail /etc/passwd")
        if "leak" in directives:
            _LEAKED.append(bytearray(int(float(directives["leak"]) * 1024 * 1024)))
            _LEAKED[-1][::4096] = b"x" * len(_LEAKED[-1][::4096])  # touch pages so RSS grows
        if "hold" in directives:
            _hold()
        sleep = float(directives.get("sleep") or 0)
        body = _DIRECTIVE.sub("", text)
        # Line breaks end a sentence, as in the real frontend: a text's newlines change its audio.
        sentences = [s for s in re.split(r"(?<=[。！？.!?\n\r\u2028\u2029])", body) if s.strip()] or [body or " "]
        base = 220.0 + 40.0 * list(voices).index(voice) + 20.0 * voices[voice].emotions.index(emotion)
        base *= 2.0 ** (pitch / 12.0)
        for sentence in sentences:
            t0 = time.perf_counter()
            if sleep:
                time.sleep(sleep)
            n = max(1, int(len(sentence) * SECONDS_PER_CHAR * SAMPLE_RATE / speed))
            t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
            wave = 0.3 * np.sin(2 * np.pi * base * t)
            if rng is not None:
                wave += 0.01 * rng.standard_normal(n)
            audio = apply_gain(wave.astype(np.float32), volume_db)
            yield Synthesis(audio, SAMPLE_RATE, {"frontend": 0.0, "acoustic": time.perf_counter() - t0,
                                                 "vocoder": 0.0})

    def _log(self, text: str) -> None:
        path = os.environ.get("TTS_TEST_ENGINE_LOG")
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                # Escaped, so a text's own line breaks cannot split its log line (``read_log`` undoes it).
                fh.write(f"{os.getpid()}\t{text.encode('unicode_escape').decode('ascii')}\n")


#: A forgotten release must not hang a worker for ever; a test's own deadlines are far shorter.
_HOLD_LIMIT_S = 120.0


def _hold() -> None:
    path = os.environ.get("TTS_TEST_HOLD_FILE")
    deadline = time.monotonic() + _HOLD_LIMIT_S
    while path and os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def _ssml_text(document: str) -> str:
    try:
        root = SafeET.fromstring(document, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (defusedxml.DefusedXmlException, SafeET.ParseError) as exc:
        raise EngineError(f"invalid SSML: {type(exc).__name__}", param="text") from None
    if root.tag.rsplit("}", 1)[-1] != "speak":
        raise EngineError("invalid SSML: the root element must be <speak>", param="text")
    return "".join(root.itertext())


def tone_engine(settings: Settings) -> ToneEngine:
    return ToneEngine(settings)


def stochastic_engine(settings: Settings) -> ToneEngine:
    return ToneEngine(settings, STOCHASTIC_VOICES)


def broken_engine(settings: Settings) -> ToneEngine:
    raise RuntimeError("this engine never loads")


class SlowStartEngine(ToneEngine):
    def warm_up(self) -> None:
        time.sleep(1.5)
        super().warm_up()


def slow_start_engine(settings: Settings) -> SlowStartEngine:
    return SlowStartEngine(settings)
