"""Polyphone disambiguation with g2pM's BiLSTM (kakaobrain, Apache-2.0; weights ship in the ``g2pm`` wheel).

pypinyin reads a polyphonic character that no phrase in its table covers with one fixed default (掺 is always
can4, 率 always lv4), which is wrong in roughly one sentence in eight. g2pM was trained on the CPP corpus to pick
the reading from the sentence. We keep pypinyin wherever one of its multi-character phrases fixes the reading
(those are right far more often than the model, e.g. 银行 hang2) and ask the model only about the remaining
polyphonic characters, with the whole CJK run as context.

The forward pass is written here in vectorised numpy over g2pM's weight arrays (PyTorch LSTM layout, gate
order i, f, g, o): g2pM's own ``__call__`` steps the sequence with per-step Python slicing and takes an argmax over
all 876 classes, while we restrict the choice to the character's own readings. Loading is done once per process
at frontend construction (worker warm-up); if the package or its files are unusable the frontend logs a warning
and reads as plain pypinyin.
"""

from __future__ import annotations

import logging
import pickle
import threading
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

_F32 = npt.NDArray[np.float32]

# The characters the model decides. g2pM was trained on CPP, whose sentences are balanced across each character's
# readings, so on running text it over-predicts rare readings of common characters (没 -> mo4 in 他没来, 重 ->
# chong2 in 太重了, 粘 -> nian2 for the verb zhān, with probabilities above 0.99, so no confidence threshold
# separates them). We therefore use it only where our phrase-table reading is known to be poor: the characters that
# we read right in under 70% of CPP **dev** sentences, where the model is right in at least 2 more of them, and where
# the model does no worse on our own running-text set (tests/data/polyphones.tsv). Chosen on the dev split only
# (never test): CPP dev 87.2% -> 95.9%, our set 83.4% -> 86.0%. ``bench/polyphone.py --cpp-dir`` recomputes the
# per-character comparison.
MODEL_CHARS = frozenset(
    "为什仆伺俟刹剌勒卜卷咥哇哟哦哩啦圜埏塞姥媛子尽峒崴巂帖幢徼扒抡拧拽挣掖掺攒晃晟曲朴杓杠椎沓泊炔煞燕琢瑱町窨累纥缊缪"
    "翟耙耶肖脯舍艮芾苕茄茜莘葛蒙藉藏蛤蜇蠡裨覃轧载迤钉钻铣锔镐镝阆阏阙隗隽颉鬲鲜鹄"
)

# 一 and 不 are left to the sandhi rules (their lexical tone is fixed; what changes is the sandhi tone).
_SKIP = frozenset("一不")


def _sigmoid(x: _F32) -> _F32:
    one = np.float32(1.0)
    out: _F32 = one / (one + np.exp(-x))
    return out


class PolyphoneModel:
    """g2pM's weights and dictionary, with a batched numpy forward pass."""

    def __init__(self, weights: dict[str, Any], char2idx: dict[str, int], class2idx: dict[str, int],
                 cedict: dict[str, list[str]]) -> None:  # fmt: skip
        def arr(name: str) -> _F32:
            return np.asarray(weights[name], dtype=np.float32)

        self._emb = arr("embedding.weight")
        self._w_ih = (arr("lstm.weight_ih_l0"), arr("lstm.weight_ih_l0_reverse"))
        self._w_hh = (arr("lstm.weight_hh_l0"), arr("lstm.weight_hh_l0_reverse"))
        self._b = (
            arr("lstm.bias_ih_l0") + arr("lstm.bias_hh_l0"),
            arr("lstm.bias_ih_l0_reverse") + arr("lstm.bias_hh_l0_reverse"),
        )
        self._w0, self._b0 = arr("logit_layer.0.weight"), arr("logit_layer.0.bias")
        self._w1, self._b1 = arr("logit_layer.2.weight"), arr("logit_layer.2.bias")
        self._char2idx = dict(char2idx)
        self._unk = self._char2idx["<UNK>"]
        self._bos = self._char2idx["시"]  # g2pM's sentence markers are two Hangul syllables
        self._eos = self._char2idx["끝"]
        # Each polyphonic character's candidate classes and their readings in pypinyin's TONE3 spelling.
        self._candidates: dict[str, tuple[npt.NDArray[np.int64], tuple[str, ...]]] = {}
        for char, prons in cedict.items():
            known = [p for p in dict.fromkeys(prons) if p in class2idx]
            if len(char) == 1 and len(known) > 1 and char not in _SKIP:
                self._candidates[char] = (
                    np.array([class2idx[p] for p in known], dtype=np.int64),
                    tuple(p.replace("u:", "v") for p in known),
                )
        self._predict_cached = lru_cache(maxsize=4096)(self._predict)

    @classmethod
    def load(cls) -> PolyphoneModel:
        """Load g2pM's files from its installed package (no network). Raises on any failure.

        The pickles are read here rather than through ``g2pM.G2pM``, which leaves its files open (a
        ResourceWarning in every worker). They come from an installed wheel, so they are as trusted as its code.
        """
        from importlib.resources import files

        package = files("g2pM")

        def unpickle(name: str) -> Any:
            with package.joinpath(name).open("rb") as f:
                return pickle.load(f)

        return cls(unpickle("np_ckpt.pkl"), unpickle("char2idx.pkl"), unpickle("class2idx.pkl"),
                   unpickle("digest_cedict.pkl"))  # fmt: skip

    def is_polyphone(self, char: str) -> bool:
        return char in self._candidates

    def predict(self, text: str) -> dict[int, tuple[str, float]]:
        """Position -> (reading in TONE3, probability among the character's readings) for each polyphonic
        character of ``text``. Cached per text: the words of one run all ask about the same run."""
        return self._predict_cached(text)

    def _predict(self, text: str) -> dict[int, tuple[str, float]]:
        positions = [i for i, ch in enumerate(text) if ch in self._candidates]
        if not positions:
            return {}
        ids = np.array([self._bos, *(self._char2idx.get(ch, self._unk) for ch in text), self._eos], dtype=np.int64)
        x = self._emb[ids]
        fw = self._lstm(x, 0)
        bw = self._lstm(x[::-1], 1)[::-1]
        rows = np.array(positions) + 1  # after BOS
        hidden = np.concatenate([fw[rows], bw[rows]], axis=1)
        logits = np.maximum(hidden @ self._w0.T + self._b0, 0.0) @ self._w1.T + self._b1
        out: dict[int, tuple[str, float]] = {}
        for row, pos in enumerate(positions):
            classes, readings = self._candidates[text[pos]]
            scores = logits[row, classes].astype(np.float64)
            probs = np.exp(scores - scores.max())
            probs /= probs.sum()
            best = int(np.argmax(probs))
            out[pos] = (readings[best], float(probs[best]))
        return out

    def _lstm(self, x: _F32, direction: int) -> _F32:
        w_hh = self._w_hh[direction]
        hidden_size = w_hh.shape[1]
        gates_in = x @ self._w_ih[direction].T + self._b[direction]
        h = np.zeros(hidden_size, dtype=np.float32)
        c = np.zeros(hidden_size, dtype=np.float32)
        out = np.empty((x.shape[0], hidden_size), dtype=np.float32)
        for t in range(x.shape[0]):
            gates = gates_in[t] + w_hh @ h
            i = _sigmoid(gates[:hidden_size])
            f = _sigmoid(gates[hidden_size : 2 * hidden_size])
            g = np.tanh(gates[2 * hidden_size : 3 * hidden_size])
            o = _sigmoid(gates[3 * hidden_size :])
            c = f * c + i * g
            h = o * np.tanh(c)
            out[t] = h
        return out


_model: PolyphoneModel | None = None
_state = "unloaded"  # unloaded | loaded | failed | disabled
_scope: frozenset[str] | None = MODEL_CHARS  # None: every polyphonic character (for measuring)
_state_lock = threading.Lock()


def load() -> PolyphoneModel | None:
    """Load the model once per process (called when the frontend is built, i.e. at worker warm-up). A failure is
    logged once and the frontend reads as plain pypinyin."""
    global _model, _state
    with _state_lock:
        if _state == "unloaded":
            try:
                _model = PolyphoneModel.load()
                _state = "loaded"
            except Exception as exc:
                _state = "failed"
                logger.warning("polyphone model unavailable, reading polyphones with pypinyin defaults: %r", exc)
        return _model


def set_enabled(enabled: bool, chars: frozenset[str] | None = MODEL_CHARS) -> None:
    """Turn the model off or back on, deciding ``chars`` (``None``: all polyphones), for benchmarks that compare
    readings with and without it; clears cached readings."""
    global _model, _state, _scope
    with _state_lock:
        _model = None
        _state = "unloaded" if enabled else "disabled"
        _scope = chars
    if enabled:
        load()
    from tts_server.inference.frontend.pinyin import word_reading

    word_reading.cache_clear()


def active() -> PolyphoneModel | None:
    return _model


@lru_cache(maxsize=65536)
def _phrase_fixed(word: str) -> tuple[bool, ...]:
    """Which characters of ``word`` pypinyin reads from one of its multi-character phrases."""
    from pypinyin.constants import PHRASES_DICT
    from pypinyin.seg.mmseg import seg

    fixed: list[bool] = []
    for piece in seg.cut(word):
        fixed.extend([len(piece) > 1 and piece in PHRASES_DICT] * len(piece))
    if len(fixed) != len(word):  # pypinyin dropped or merged something: trust it for the whole word
        return (True,) * len(word)
    return tuple(fixed)


def refine(word: str, readings: tuple[str, ...], context: str, start: int) -> tuple[str, ...]:
    """pypinyin's TONE3 ``readings`` of ``word`` (found at ``context[start:]``), with each polyphonic character
    that no pypinyin phrase fixes read as the model predicts from ``context``."""
    model, scope = _model, _scope
    if model is None or len(readings) != len(word) or context[start : start + len(word)] != word:
        return readings
    if not any(model.is_polyphone(ch) and (scope is None or ch in scope) for ch in word):
        return readings
    fixed = _phrase_fixed(word)
    predicted = model.predict(context)
    out = list(readings)
    for i, ch in enumerate(word):
        if fixed[i] or not readings[i] or (scope is not None and ch not in scope):
            continue
        guess = predicted.get(start + i)
        if guess is not None:
            out[i] = guess[0]
    return tuple(out)
