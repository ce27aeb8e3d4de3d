"""The engine protocol module, the engine registry, and the worker handing a job's input_format to the engine."""

from __future__ import annotations

import ast
import time
from multiprocessing import Pipe
from pathlib import Path

import pytest

from tests.conftest import TONE_ENGINE, read_log
from tests.engines import ToneEngine
from tts_server.config import load_settings
from tts_server.inference import engine as engine_module
from tts_server.inference.engine import INPUT_FORMATS, Engine, EngineLoadError
from tts_server.inference.loading import load_engine
from tts_server.inference.messages import Chunk, Failure, Job, Result
from tts_server.inference.worker import _run


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_protocol_module_imports_no_engine() -> None:
    """The protocol is what engines implement; importing a concrete engine from it (even inside a function)
    made a cycle with the Sambert engine, which imports the protocol."""
    imported = _imported_modules(Path(engine_module.__file__))
    inference = {name for name in imported if name.startswith("tts_server.")}
    assert inference == set(), inference


def test_input_formats() -> None:
    assert INPUT_FORMATS == ("text", "ssml", "symbols")
    assert Job(1, "r", "t", "alpha", "neutral", 1.0, deadline=0.0).input_format == "text"


def test_load_engine_by_factory_name() -> None:
    engine = load_engine(load_settings(engine={"name": TONE_ENGINE}))
    assert isinstance(engine, Engine)
    assert isinstance(engine, ToneEngine)
    with pytest.raises(EngineLoadError, match="module:factory"):
        load_engine(load_settings(engine={"name": "nonsense"}))


def _job(text: str, input_format: str, stream: bool = False) -> Job:
    return Job(1, "req", text, "alpha", "neutral", 1.0, deadline=time.monotonic() + 30, stream=stream,
               input_format=input_format)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_worker_passes_input_format_to_the_engine(engine_log: Path, stream: bool) -> None:
    engine = ToneEngine(load_settings(engine={"name": TONE_ENGINE}))
    parent, child = Pipe()
    try:
        doc = "<speak>你好<break/>世界</speak>"
        outcome = _run(engine, _job(doc, "ssml", stream), child.send, set())
        assert isinstance(outcome, Result)
        as_text = _run(engine, _job(doc, "text", stream), child.send, set())
        assert isinstance(as_text, Result)
        # Read as SSML, only the four characters are spoken; as text, the markup is spoken too.
        assert outcome.audio_seconds < as_text.audio_seconds
        if stream:
            chunks = []
            while parent.poll(0):
                chunks.append(parent.recv())
            assert chunks
            assert all(isinstance(c, Chunk) for c in chunks)
        bad = _run(engine, _job("<speak>你好", "ssml", stream), child.send, set())
        assert isinstance(bad, Failure)
        assert bad.client_error
        assert bad.message.startswith("invalid SSML")
    finally:
        parent.close()
        child.close()
    assert [text for _, text in read_log(engine_log)] == [f"ssml\t{doc}", doc, "ssml\t<speak>你好"]



def test_cli_synth_input_format(engine_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tts_server.cli import main

    config = tmp_path / "config.toml"
    config.write_text(f'[engine]\nname = "{TONE_ENGINE}"\n[model]\ndownload_dir = "{tmp_path / "cache"}"\n')
    out = tmp_path / "out.wav"
    base = ["-o", str(out), "--config", str(config)]
    assert main(["synth", "<speak>你好</speak>", *base, "--input-format", "ssml"]) == 0
    assert main(["synth", "<speak>你好", *base, "--input-format", "ssml"]) == 2
    assert "invalid SSML" in capsys.readouterr().err
    assert main(["synth", "<speak>你好</speak>", *base]) == 0
    jobs = [text for _, text in read_log(engine_log) if text != "warm up"]
    assert jobs == ["ssml\t<speak>你好</speak>", "ssml\t<speak>你好", "<speak>你好</speak>"]
