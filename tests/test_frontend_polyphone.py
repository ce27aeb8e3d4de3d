"""Polyphone disambiguation: the stacked reader (g2pM's BiLSTM and pypinyin weighed by a trained log-linear model)
reads the characters pypinyin reads with a fixed, often wrong default."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from importlib.resources import files

import pytest

from bench.polyphone import Item, cv_folds, evaluate, frontend_reader, lexical_reader, load_tsv
from tts_server.inference.frontend import Frontend, polyphone


@pytest.fixture
def model_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield
    # A test's broken loader must be gone before the real model is loaded again: otherwise the process keeps the
    # "failed" state and every later test reads polyphones as plain pypinyin (which hid a reading regression).
    monkeypatch.undo()
    polyphone.set_enabled(True)
    assert polyphone.active() is not None


@pytest.fixture(scope="module")
def frontend() -> Frontend:
    return Frontend()


def test_model_reads_chan1_where_pypinyin_says_can4(frontend: Frontend, model_restored: None) -> None:
    text = "他往面粉里掺了一点水。"
    assert polyphone.active() is not None
    assert "chan1" in frontend.pinyin(text)[0]
    polyphone.set_enabled(False)
    assert "can4" in frontend.pinyin(text)[0]


def test_phrase_table_still_decides_known_words(frontend: Frontend) -> None:
    # The model alone reads 银行 as yin2 xing2; pypinyin's phrase wins.
    assert frontend.pinyin("我去银行取钱。")[0].startswith("wo3 #1 qu4 #1 yin2 hang2")


def test_in_repo_accuracy_improves_with_the_model(model_restored: None) -> None:
    results = evaluate(load_tsv())
    before, with_model = results["ours-before"][0], results["stacked"][0]
    # Measured: 83.4% -> 86.5% (+6 of 193 sentences); require at least +3 sentences.
    assert with_model - before >= 3 / 193 - 1e-9, results


def test_frontend_falls_back_to_pypinyin_when_the_model_cannot_load(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, model_restored: None
) -> None:
    def broken() -> polyphone.PolyphoneModel:
        raise OSError("np_ckpt.pkl: no such file")

    monkeypatch.setattr(polyphone.PolyphoneModel, "load", staticmethod(broken))
    polyphone.set_enabled(True)  # forget the loaded model; the next frontend tries again
    with caplog.at_level(logging.WARNING, logger=polyphone.__name__):
        frontend = Frontend()
    assert polyphone.active() is None
    assert any("polyphone model unavailable" in r.getMessage() for r in caplog.records)
    assert "can4" in frontend.pinyin("他往面粉里掺了一点水。")[0]


@pytest.mark.parametrize(
    ("text", "wrong", "right"),
    [
        ("酒里掺了水。", "can4", "chan1"),  # pypinyin's default for 掺 is can4
        ("他一个人率兵出征。", "lv4 bing1", "shuai4 bing1"),  # 率 leads (shuai4), not a rate (lv4)
        ("他把钱都花尽了。", "jin3", "jin4"),  # 尽 used up (jin4), not 尽管's jin3
        ("大家尽力而为。", "er2 wei4", "er2 wei2"),  # 为 in 而为 is wei2
    ],
)
def test_stacked_reader_fixes_pypinyin_defaults(
    frontend: Frontend, model_restored: None, text: str, wrong: str, right: str
) -> None:
    polyphone.set_enabled(False)
    assert wrong in frontend.pinyin(text)[0]
    polyphone.set_enabled(True)
    reading = frontend.pinyin(text)[0]
    assert right in reading
    assert wrong not in reading


def test_shipped_stack_is_small_and_loads_without_torch() -> None:
    path = files("tts_server.inference.frontend").joinpath(polyphone.STACK_FILE)
    assert 0 < len(path.read_bytes()) <= 10 * 1024 * 1024
    # The API process reads polyphones for /v1/frontend/preview and must not pull in torch to do it.
    code = (
        "import sys; from tts_server.inference.frontend import polyphone; "
        "polyphone.StackedReader.load(); polyphone.PolyphoneModel.load(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_frontend_falls_back_to_pypinyin_when_the_stack_cannot_load(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, model_restored: None
) -> None:
    def broken() -> polyphone.StackedReader:
        raise ValueError("bad polyphone stack arrays")

    monkeypatch.setattr(polyphone.StackedReader, "load", staticmethod(broken))
    polyphone.set_enabled(True)
    with caplog.at_level(logging.WARNING, logger=polyphone.__name__):
        frontend = Frontend()
    assert polyphone.active() is None
    assert any("polyphone model unavailable" in r.getMessage() for r in caplog.records)
    assert "can4" in frontend.pinyin("他往面粉里掺了一点水。")[0]


def test_shipped_stack_states_what_it_was_trained_on() -> None:
    meta = polyphone.stack_metadata()
    assert meta["trained_on"]
    if "CPP dev" in meta["trained_on"]:
        # Trained on CPP dev: bench/polyphone.py must be able to print the cross-validated figure beside the
        # in-sample one.
        cv = meta["cv"]
        assert len(cv["spoken"]) == len(cv["lexical"]) == cv["k"] >= 2
        assert 0.5 < cv["spoken_mean"] <= 1.0
        assert 0.5 < cv["lexical_mean"] <= 1.0


def test_cv_folds_are_seeded_stratified_and_keep_duplicates_together() -> None:
    items = [(f"{c}句子{i}", 0, "x") for c in "长行乐" for i in range(7)] + [("长句子0", 0, "x")]
    folds = cv_folds(items, 5, seed=3)
    assert folds == cv_folds(items, 5, seed=3)
    assert folds != cv_folds(items, 5, seed=4)
    assert folds[-1] == folds[0]  # a repeated sentence is held out with its first copy
    for char in "长行乐":
        per_fold = [sum(1 for it, f in zip(items[:-1], folds, strict=False) if it[0][0] == char and f == k)
                    for k in range(5)]  # fmt: skip
        assert max(per_fold) - min(per_fold) <= 1, (char, per_fold)
    sizes = [folds[:-1].count(k) for k in range(5)]
    assert max(sizes) - min(sizes) <= 1


def test_lexical_reading_is_before_the_neutral_tone_lexicon(model_restored: None) -> None:
    # CPP labels citation tones (衣服 fu2); the frontend speaks the neutral tone.
    text = "他买了一件新衣服。"
    item = Item(text, text.index("服"), "fu2")
    assert lexical_reader()(item) == "fu2"
    assert frontend_reader()(item) == "fu5"
