"""The command line: voices and synth run one engine in-process; config errors and a port in use are reported,
not raised."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REPO, TONE_ENGINE
from tests.engines import SECONDS_PER_CHAR
from tests.test_server_process import _server_command
from tests.tinymodel import build_tiny_model_dir
from tts_server.cli import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tts.toml"
    path.write_text(f'[engine]\nname = "{TONE_ENGINE}"\n[model]\ndownload_dir = "{tmp_path / "cache"}"\n')
    return path


def test_voices_prints_one_json_line_per_voice(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["voices", "--config", str(config)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [v["name"] for v in lines] == ["alpha", "beta"]
    assert lines[1]["emotions"] == ["neutral", "angry"]


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_synth_writes_audio(config: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    assert main(["synth", "你好世界", "-o", str(out), "--config", str(config), "--voice", "beta",
                 "--emotion", "angry"]) == 0
    audio, rate = sf.read(out)
    assert rate == 16000
    assert len(audio) == int(4 * SECONDS_PER_CHAR * 16000)


def test_synth_rejects_unknown_voice_and_bad_input(config: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.wav"
    assert main(["synth", "好", "-o", str(out), "--config", str(config), "--voice", "gamma"]) == 2
    assert "alpha, beta" in capsys.readouterr().err
    assert main(["synth", "[fail] 好", "-o", str(out), "--config", str(config)]) == 2
    assert "refuses" in capsys.readouterr().err
    assert not out.exists()


def test_config_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[pool]\nworkerz = 2\n")
    assert main(["voices", "--config", str(bad)]) == 2
    assert "pool.workerz" in capsys.readouterr().err


def test_serve_on_a_port_in_use_exits_with_one_line(config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        done = subprocess.run([*_server_command(config, port), "--host", "127.0.0.1"], capture_output=True,
                              text=True, env=env, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "in use" in lines[0]


def test_synth_writes_timestamps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = build_tiny_model_dir(tmp_path / "model", voices=("zhitian_emo",))
    out, stamps = tmp_path / "out.wav", tmp_path / "out.json"
    text = '<speak>北京<break time="0.5s"/><sub alias="二零二六">2026</sub>年<mark name="end"/></speak>'
    assert main(["synth", text, "-o", str(out), "--model-dir", str(model_dir), "--input-format", "ssml",
                 "--timestamps", str(stamps)]) == 0
    assert f"wrote {stamps} (2 sentences, 3 words, 7 syllables, 1 marks)" in capsys.readouterr().out
    audio, rate = sf.read(out)
    document = json.loads(stamps.read_text(encoding="utf-8"))
    assert document["duration_ms"] * rate / 1000 == len(audio)
    assert [w["text"] for w in document["words"]] == ["北京", "2026", "年"]
    assert [s["text"] for s in document["syllables"]] == ["北", "京", "2026", "2026", "2026", "2026", "年"]
    # After 年: where its syllable ends (the sentence's closing break follows).
    assert document["marks"] == [{"name": "end", "time_ms": document["syllables"][-1]["end_ms"], "sentence": 1}]


def test_synth_timestamps_need_an_engine_that_reports_them(config: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.wav"
    assert main(["synth", "好", "-o", str(out), "--config", str(config), "--timestamps",
                 str(tmp_path / "x.json")]) == 2
    assert "does not report timestamps" in capsys.readouterr().err
    assert not out.exists()


def test_synth_plot_draws_waveform_mel_and_syllables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from matplotlib.image import imread

    model_dir = build_tiny_model_dir(tmp_path / "model", voices=("zhitian_emo",))
    out, png = tmp_path / "out.wav", tmp_path / "out.png"
    assert main(["synth", "北京欢迎你。", "-o", str(out), "--model-dir", str(model_dir), "--plot", str(png)]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    image = imread(png)
    assert image.shape[0] == 600
    assert image.shape[1] >= 800
    # Not a blank canvas: the waveform, the spectrogram's colours and the boundary lines are all there.
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50


def test_log_mel_puts_a_tone_in_its_band() -> None:
    from tts_server.plot import log_mel, mel_filterbank

    bank = mel_filterbank(16000, 1024, 80)
    assert bank.shape == (80, 513)
    assert np.all(bank.max(axis=1) > 0.5)  # every filter covers at least one bin near its peak
    rate = 16000
    t = np.arange(rate) / rate
    spec, hop_s = log_mel(0.5 * np.sin(2 * np.pi * 1000.0 * t), rate)
    assert hop_s == 0.0125
    assert spec.shape == (80, 81)
    peak_band = int(np.argmax(spec[:, 40]))
    assert bank[peak_band, round(1000 / (rate / 1024))] == bank[:, round(1000 / (rate / 1024))].max()
