"""Polyphone disambiguation: g2pM's BiLSTM (kakaobrain, Apache-2.0; weights ship in the ``g2pm`` wheel) and
pypinyin's reading, weighed per character by a small trained log-linear reader (``polyphone_stack.npz``).

pypinyin reads a polyphonic character that no phrase in its table covers with one fixed default (掺 is always
can4, 率 always lv4), which is wrong in roughly one sentence in eight. g2pM, trained on the CPP corpus, picks the
reading from the sentence, but it was trained on sentences balanced across each character's readings, so on
running text it over-predicts rare readings of common characters (没 -> mo4 in 他没来, with probabilities above
0.99), and it overrules phrases pypinyin reads right (银行 hang2). Neither source is right everywhere, so
``StackedReader`` scores each candidate reading of every polyphone from: g2pM's log-probability, whether it is
pypinyin's reading and whether a 2- or 3+-character pypinyin phrase or only the default gave it, per-character
corrections of those weights, and hashed (character, reading, context) weights of the characters at -3..+3, the
jieba word and g2pM's confidence. ``bench/train_polyphone.py`` trains it (its docstring says on which data: the
CPP train sentences were not available, so labelled sentences of the g2pL corpus, 114 common polyphonic
characters, with any sentence of CPP dev removed, plus CPP dev itself). Because the shipped model has seen CPP
dev, its accuracy there is measured by 5-fold cross-validation (a model trained on g2pL and four fifths of CPP
dev reads the held-out fifth; hyper-parameters fixed beforehand, to the earlier model's, whose L2 strength was
picked on CPP dev; CPP test is never read), and the figures travel in the npz (``stack_metadata``).
``bench/polyphone.py --cpp-dir`` prints them beside the in-sample ones, which are not the accuracy. CPP dev
(9,893 sentences): pypinyin 87.6%, our frontend without a model 87.2%, g2pM where no phrase fixes the reading
96.8%; the stacked reader cross-validated 96.9% as spoken (folds 96.3-97.2%) and
97.3% as its lexical choice (folds 96.8-97.6%). A multi-character pypinyin phrase keeps its reading (暖和 huo,
一行人 xing2): letting the reader overrule phrases scored 97.4% / 97.8% on CPP dev, whose sentences are balanced
across each character's readings, but misread common words of running text (our set 86.0% against 87.6% now).
"As spoken" is after the frontend's neutral-tone lexicon and erhua, which read 衣服 fu5, 知识 shi5, 哪儿 nar3
where CPP labels citation tones; "lexical" is the reading the reader chose, which is what CPP labels.
Our running-text set (tests/data/polyphones.tsv): 83.4% without a model, 87.6% with the stacked reader. What
limits it is data: CPP dev has about 16 sentences per character, g2pL's 114 characters carry label priors of
their own (Wikipedia's transliterations), and pypinyin's single-character default still wins where neither has
seen the character's context.

g2pM's forward pass is written here in vectorised numpy over its weight arrays (PyTorch LSTM layout, gate order
i, f, g, o): g2pM's own ``__call__`` steps the sequence with per-step Python slicing and takes an argmax over all
876 classes, while we score only the character's own readings. Both models are loaded once per process at
frontend construction (worker warm-up), numpy only; if a file is unusable the frontend logs a warning and reads
as plain pypinyin.
"""

from __future__ import annotations

import logging
import pickle
import threading
import zlib
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

_F32 = npt.NDArray[np.float32]

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
        self._w_hh_both = np.stack(self._w_hh)
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

    def candidates(self, char: str) -> tuple[str, ...]:
        """The character's readings in TONE3 (empty for a character the model does not know as polyphonic)."""
        entry = self._candidates.get(char)
        return entry[1] if entry is not None else ()

    def predict(self, text: str) -> dict[int, tuple[str, float]]:
        """Position -> (reading in TONE3, probability among the character's readings) for each polyphonic
        character of ``text``."""
        out: dict[int, tuple[str, float]] = {}
        for pos, (readings, probs) in self.distribution(text).items():
            best = int(np.argmax(probs))
            out[pos] = (readings[best], float(probs[best]))
        return out

    def distribution(self, text: str) -> dict[int, tuple[tuple[str, ...], npt.NDArray[np.float64]]]:
        """Position -> (the character's readings, their probabilities) for each polyphonic character of
        ``text``. Cached per text: the words of one run all ask about the same run."""
        return self._predict_cached(text)

    def _predict(self, text: str) -> dict[int, tuple[tuple[str, ...], npt.NDArray[np.float64]]]:
        positions = [i for i, ch in enumerate(text) if ch in self._candidates]
        if not positions:
            return {}
        ids = np.array([self._bos, *(self._char2idx.get(ch, self._unk) for ch in text), self._eos], dtype=np.int64)
        x = self._emb[ids]
        fw, bw = self._bilstm(x)
        rows = np.array(positions) + 1  # after BOS
        hidden = np.concatenate([fw[rows], bw[rows]], axis=1)
        logits = np.maximum(hidden @ self._w0.T + self._b0, 0.0) @ self._w1.T + self._b1
        out: dict[int, tuple[tuple[str, ...], npt.NDArray[np.float64]]] = {}
        for row, pos in enumerate(positions):
            classes, readings = self._candidates[text[pos]]
            scores = logits[row, classes].astype(np.float64)
            probs = np.exp(scores - scores.max())
            probs /= probs.sum()
            out[pos] = (readings, probs)
        return out

    def _bilstm(self, x: _F32) -> tuple[_F32, _F32]:
        """Both directions stepped together (the backward one over the reversed sequence): one Python loop
        iteration per character instead of two, which is most of the cost on a short run."""
        hidden_size = self._w_hh_both.shape[2]
        steps = x.shape[0]
        gates_in = np.stack([x @ self._w_ih[0].T + self._b[0], (x @ self._w_ih[1].T + self._b[1])[::-1]])
        h = np.zeros((2, hidden_size), dtype=np.float32)
        c = np.zeros((2, hidden_size), dtype=np.float32)
        out = np.empty((2, steps, hidden_size), dtype=np.float32)
        for t in range(steps):
            gates = gates_in[:, t] + np.matmul(self._w_hh_both, h[:, :, None])[:, :, 0]
            act = _sigmoid(gates)  # i, f and o; g is recomputed with tanh
            g = np.tanh(gates[:, 2 * hidden_size : 3 * hidden_size])
            c = act[:, hidden_size : 2 * hidden_size] * c + act[:, :hidden_size] * g
            h = act[:, 3 * hidden_size :] * np.tanh(c)
            out[:, t] = h
        fw: _F32 = out[0]
        bw: _F32 = out[1, ::-1]
        return fw, bw


# --- The stacked reader -------------------------------------------------------------------------------------------

STACK_FILE = "polyphone_stack.npz"
_FLOOR = -6.0  # log-probability given to a pypinyin reading that g2pM does not list for the character
#: Dense features of one candidate reading (see ``dense_features``).
DENSE_NAMES = ("g2pm_logp", "g2pm_top", "pypinyin_phrase2", "pypinyin_phrase3", "pypinyin_default",
               "g2pm_logp_in_phrase", "not_in_g2pm")  # fmt: skip
#: Dense features that also get a per-character weight (hashed under ``char|D<index>``).
PER_CHAR_DENSE = (0, 2, 3, 4)


def _bucket(p: float) -> str:
    return "a" if p < 0.6 else "b" if p < 0.9 else "c" if p < 0.99 else "d"


def context_features(context: str, pos: int, word: str, word_start: int, pypinyin: str, phrase_len: int,
                     g2pm_top: str, g2pm_p: float) -> list[str]:  # fmt: skip
    """The reading-independent features of the polyphone at ``context[pos]``; each is conjoined with the
    character and a candidate reading when hashed."""

    def at(i: int) -> str:
        return context[i] if 0 <= i < len(context) else "^" if i < 0 else "$"

    left = [at(pos - k) for k in (1, 2, 3)]
    right = [at(pos + k) for k in (1, 2, 3)]
    return [
        "L1=" + left[0], "L2=" + left[1], "L3=" + left[2],
        "R1=" + right[0], "R2=" + right[1], "R3=" + right[2],
        "LL=" + left[1] + left[0], "RR=" + right[0] + right[1], "LR=" + left[0] + right[0],
        "W=" + word, f"WP={pos - word_start}/{len(word)}",
        f"P={pypinyin}/{min(phrase_len, 3)}",
        f"G={g2pm_top}/{_bucket(g2pm_p)}",
    ]  # fmt: skip


def candidate_readings(g2pm_readings: tuple[str, ...], pypinyin: str) -> tuple[str, ...]:
    return g2pm_readings if pypinyin in g2pm_readings or not pypinyin else (*g2pm_readings, pypinyin)


def dense_features(readings: tuple[str, ...], g2pm_readings: tuple[str, ...], g2pm_probs: npt.NDArray[np.float64],
                   pypinyin: str, phrase_len: int) -> _F32:  # fmt: skip
    """One row per candidate reading, one column per ``DENSE_NAMES``."""
    out = np.zeros((len(readings), len(DENSE_NAMES)), dtype=np.float32)
    top = g2pm_readings[int(np.argmax(g2pm_probs))]
    logp = {r: float(np.log(max(p, 1e-12))) for r, p in zip(g2pm_readings, g2pm_probs, strict=True)}
    fixed = phrase_len > 1
    for k, r in enumerate(readings):
        lp = max(logp.get(r, _FLOOR), _FLOOR)
        is_pyp = r == pypinyin
        out[k] = (lp, r == top, is_pyp and phrase_len == 2, is_pyp and phrase_len > 2, is_pyp and not fixed,
                  lp if fixed else 0.0, r not in logp)  # fmt: skip
    return out


def feature_keys(char: str, readings: tuple[str, ...], features: list[str]) -> list[list[str]]:
    """The hashed-table keys of each candidate reading: its per-character dense multipliers first (in
    ``PER_CHAR_DENSE`` order), then the context features conjoined with the character and the reading."""
    shared = [f"{char}|D{j}" for j in PER_CHAR_DENSE]
    return [shared + [f"{char}|{r}|{f}" for f in features] for r in readings]


def hash_key(key: str, mask: int) -> int:
    # crc32 rather than hash(): the ids must be the same in every process (hash() of a str is salted).
    return zlib.crc32(key.encode("utf-8")) & mask


class StackedReader:
    """A log-linear choice among a polyphone's readings, trained on labelled sentences by
    ``bench/train_polyphone.py``: shared weights over g2pM's probability and pypinyin's reading (phrase or
    default), per-character corrections of those weights, and hashed context n-gram weights per (character,
    reading)."""

    def __init__(self, dense: _F32, table: _F32) -> None:
        if dense.shape != (len(DENSE_NAMES),) or table.ndim != 1 or table.size & (table.size - 1):
            raise ValueError(f"bad polyphone stack arrays: dense {dense.shape}, table {table.shape}")
        self._dense = dense.astype(np.float32)
        self._table = table.astype(np.float32)
        self._mask = table.size - 1

    @classmethod
    def load(cls) -> StackedReader:
        from importlib.resources import files

        with files("tts_server.inference.frontend").joinpath(STACK_FILE).open("rb") as f, np.load(f) as npz:
            return cls(npz["dense"], npz["table"])

    def choose(self, char: str, context: str, pos: int, word: str, word_start: int, pypinyin: str,
               phrase_len: int, g2pm_readings: tuple[str, ...],
               g2pm_probs: npt.NDArray[np.float64]) -> str:  # fmt: skip
        readings = candidate_readings(g2pm_readings, pypinyin)
        top = int(np.argmax(g2pm_probs))
        feats = context_features(context, pos, word, word_start, pypinyin, phrase_len, g2pm_readings[top],
                                 float(g2pm_probs[top]))  # fmt: skip
        dense = dense_features(readings, g2pm_readings, g2pm_probs, pypinyin, phrase_len)
        keys = feature_keys(char, readings, feats)
        n_char = len(PER_CHAR_DENSE)
        scores = dense @ self._dense
        table, mask = self._table, self._mask
        for k, row in enumerate(keys):
            ids = [hash_key(key, mask) for key in row]
            scores[k] += float(dense[k, list(PER_CHAR_DENSE)] @ table[ids[:n_char]]) + float(table[ids[n_char:]].sum())
        return readings[int(np.argmax(scores))]


_model: PolyphoneModel | None = None
_stack: StackedReader | None = None
_state = "unloaded"  # unloaded | loaded | failed | disabled
# stacked: the trained reader decides every polyphone (shipped); g2pm: g2pM decides ``_scope`` where no phrase
# fixes the reading (the earlier scheme, kept for benchmarks); off: pypinyin alone.
_mode = "stacked"
_scope: frozenset[str] | None = None  # g2pm mode: the characters g2pM decides (None: all)
_state_lock = threading.Lock()


def load() -> PolyphoneModel | None:
    """Load the models once per process (called when the frontend is built, i.e. at worker warm-up). A failure
    is logged once and the frontend reads as plain pypinyin."""
    global _model, _stack, _state
    with _state_lock:
        if _state == "unloaded":
            try:
                model = PolyphoneModel.load()
                _stack = StackedReader.load() if _mode == "stacked" else None
                _model = model
                _state = "loaded"
            except Exception as exc:
                _model, _stack = None, None
                _state = "failed"
                logger.warning("polyphone model unavailable, reading polyphones with pypinyin defaults: %r", exc)
        return _model


def set_mode(mode: str, chars: frozenset[str] | None = None) -> None:
    """Choose how polyphones are read, for benchmarks and tests that compare: ``stacked`` (shipped), ``g2pm``
    (g2pM decides ``chars``, ``None`` meaning all, where no pypinyin phrase fixes the reading) or ``off``
    (pypinyin alone). Clears cached readings."""
    global _model, _stack, _state, _mode, _scope
    if mode not in ("stacked", "g2pm", "off"):
        raise ValueError(f"unknown polyphone mode {mode!r}")
    with _state_lock:
        _model, _stack = None, None
        _state = "disabled" if mode == "off" else "unloaded"
        _mode, _scope = mode, chars
    if mode != "off":
        load()
    from tts_server.inference.frontend.pinyin import word_reading

    word_reading.cache_clear()


def set_stack(reader: StackedReader | None) -> None:
    """Benchmarks and cross-validation: decide with ``reader`` (e.g. one fold's model) instead of the shipped
    one; ``None`` reloads the shipped one. Clears cached readings."""
    global _stack
    set_mode("stacked")
    if reader is not None:
        with _state_lock:
            _stack = reader
        from tts_server.inference.frontend.pinyin import word_reading

        word_reading.cache_clear()


def stack_metadata() -> dict[str, Any]:
    """What the shipped stack was trained on and its cross-validated figures (``bench/train_polyphone.py``
    stores them in the npz as a JSON string); empty for a file without them."""
    import json
    from importlib.resources import files

    with files("tts_server.inference.frontend").joinpath(STACK_FILE).open("rb") as f, np.load(f) as npz:
        if "meta" not in npz.files:
            return {}
        meta: dict[str, Any] = json.loads(str(npz["meta"]))
        return meta


def set_enabled(enabled: bool) -> None:
    """The shipped reader on, or pypinyin alone."""
    set_mode("stacked" if enabled else "off")


def active() -> PolyphoneModel | None:
    return _model


@lru_cache(maxsize=65536)
def phrase_lengths(word: str) -> tuple[int, ...]:
    """For each character of ``word``, the length of the pypinyin phrase that reads it (1: no phrase)."""
    from pypinyin.constants import PHRASES_DICT
    from pypinyin.seg.mmseg import seg

    lengths: list[int] = []
    for piece in seg.cut(word):
        lengths.extend([len(piece) if len(piece) > 1 and piece in PHRASES_DICT else 1] * len(piece))
    if len(lengths) != len(word):  # pypinyin dropped or merged something: trust it for the whole word
        return (max(len(word), 2),) * len(word)
    return tuple(lengths)


def refine(word: str, readings: tuple[str, ...], context: str, start: int) -> tuple[str, ...]:
    """pypinyin's TONE3 ``readings`` of ``word`` (found at ``context[start:]``), with polyphonic characters read
    from ``context``: by the stacked reader, or (``g2pm`` mode) by g2pM where no pypinyin phrase fixes them."""
    model, stack, scope = _model, _stack, _scope
    if model is None or len(readings) != len(word) or context[start : start + len(word)] != word:
        return readings
    if not any(model.is_polyphone(ch) for ch in word):
        return readings
    lengths = phrase_lengths(word)
    dist = model.distribution(context)
    out = list(readings)
    for i, ch in enumerate(word):
        guess = dist.get(start + i)
        # A multi-character pypinyin phrase fixes the reading (暖和 nuan3 huo5, 一行人 xing2) in both modes: the
        # stacked reader, trained on sentences balanced across readings, overruled such phrases wrongly on running
        # text. Measured with the reader that never saw CPP dev: CPP dev 97.0% -> 96.5%, our running-text set
        # 86.0% -> 87.6%; running text is what users send.
        if guess is None or not readings[i] or lengths[i] > 1:
            continue
        if stack is not None:
            out[i] = stack.choose(ch, context, start + i, word, start, readings[i], lengths[i], *guess)
        elif scope is None or ch in scope:
            out[i] = guess[0][int(np.argmax(guess[1]))]
    return tuple(out)
