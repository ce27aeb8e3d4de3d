"""Train the stacked polyphone reader shipped as ``src/tts_server/inference/frontend/polyphone_stack.npz``.

    python bench/train_polyphone.py --train DIR/train --train DIR/dev --exclude CPP/dev [--eval CPP/dev]

Each ``--train`` / ``--eval`` / ``--exclude`` names a sentence file pair ``PREFIX.sent`` / ``PREFIX.lb`` in the
CPP format (the polyphone between two U+2581 marks, one TONE3 label per line). Not run in CI; takes a few
minutes on two CPU cores (feature extraction runs g2pM over every sentence).

Data. The CPP train split's sentences (kakaobrain/g2pM ``data/train.sent``) could not be had here: only its
labels are in the available snapshot. The shipped model is trained on the g2pL corpus instead (whzikaros/g2pL,
``data/train.*`` and ``data/dev.*``: 45,600 sentences from Wikipedia-like text, 114 common polyphonic characters,
labels in CPP's spelling), with every sentence that also occurs in CPP dev (``--exclude``) dropped. CPP dev is
used only to report accuracy and pick the regularisation strength; CPP test is never read. g2pM itself (whose
probabilities are a feature) was trained by its authors on CPP train.

What is learned (see ``polyphone.StackedReader``): shared weights over g2pM's log-probability of each reading
and over pypinyin's reading (from a 2-character phrase, a longer phrase, or its single-character default), a
per-character correction of those weights for the characters seen in training, and hashed per (character,
reading) weights of the context: characters at -3..+3, the bigrams around it, the jieba word and the position in
it, pypinyin's reading and g2pM's confidence bucket. Full-batch Adam on the softmax over each character's
readings with an L2 penalty (torch here; inference is numpy only).
"""

from __future__ import annotations

import argparse
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MARK = "\u2581"


@dataclass
class Example:
    keys: list[list[str]]  # per candidate reading
    dense: np.ndarray  # (candidates, len(DENSE_NAMES))
    label: int
    char: str


def read_pairs(prefix: str) -> list[tuple[str, int, str]]:
    sents = Path(prefix + ".sent").read_text(encoding="utf-8").splitlines()
    labels = Path(prefix + ".lb").read_text(encoding="utf-8").splitlines()
    if len(sents) != len(labels):
        raise SystemExit(f"{prefix}: {len(sents)} sentences but {len(labels)} labels")
    out = []
    for s, lb in zip(sents, labels, strict=True):
        if MARK in s:
            out.append((s.replace(MARK, ""), s.index(MARK), lb.strip().replace("u:", "v").replace("ü", "v")))
    return out


@dataclass
class Raw:
    """One labelled polyphone as the frontend sees it."""

    char: str
    run: str  # the CJK run around it
    pos: int  # its index in ``run``
    word: str  # the jieba word containing it
    offset: int  # the word's index in ``run``
    pyp: str  # pypinyin's reading of it within ``word``
    plen: int  # length of the pypinyin phrase that reads it (1: none)
    g_read: tuple[str, ...]  # g2pM's candidate readings
    g_prob: np.ndarray  # and their probabilities
    label: str


def extract(pairs: list[tuple[str, int, str]]) -> list[Raw]:
    """Features as the frontend computes them: the jieba word and pypinyin's reading of the polyphone within it,
    g2pM's distribution over the CJK run."""
    from tts_server.inference.frontend import polyphone
    from tts_server.inference.frontend.pinyin import CJK_RE, Segmenter, _raw_pinyin

    segmenter = Segmenter()  # also applies the frontend's pypinyin adjustments
    polyphone.set_mode("g2pm")
    model = polyphone.active()
    assert model is not None
    out: list[Raw] = []
    for text, index, label in pairs:
        char = text[index]
        if not model.is_polyphone(char):
            continue
        for m in CJK_RE.finditer(text):
            if not m.start() <= index < m.end():
                continue
            run, pos = m.group(), index - m.start()
            offset = 0
            for word in segmenter.words(run):
                if offset <= pos < offset + len(word):
                    break
                offset += len(word)
            else:
                break
            pys = _raw_pinyin(word)
            if len(pys) != len(word) or not pys[pos - offset]:
                break
            pyp, plen = pys[pos - offset], polyphone.phrase_lengths(word)[pos - offset]
            g_read, g_prob = model.distribution(run)[pos]
            readings = polyphone.candidate_readings(g_read, pyp)
            if label not in readings:
                break
            out.append(Raw(char, run, pos, word, offset, pyp, plen, g_read, g_prob, label))
            break
    return out


def featurise(raws: list[Raw]) -> list[Example]:
    from tts_server.inference.frontend import polyphone

    out = []
    for r in raws:
        readings = polyphone.candidate_readings(r.g_read, r.pyp)
        top = int(np.argmax(r.g_prob))
        feats = polyphone.context_features(r.run, r.pos, r.word, r.offset, r.pyp, r.plen, r.g_read[top],
                                           float(r.g_prob[top]))  # fmt: skip
        out.append(Example(polyphone.feature_keys(r.char, readings, feats),
                           polyphone.dense_features(readings, r.g_read, r.g_prob, r.pyp, r.plen),
                           readings.index(r.label), r.char))  # fmt: skip
    return out


def _dropped(key: str, drop: tuple[str, ...]) -> bool:
    feature = key.split("|")[-1]
    return feature.startswith(drop)


def tensors(examples: list[Example], mask: int, drop: tuple[str, ...] = ()) -> dict[str, object]:
    import torch

    from tts_server.inference.frontend import polyphone

    k_max = max(len(e.keys) for e in examples)
    n_keys = len(examples[0].keys[0])
    n_dense = len(polyphone.DENSE_NAMES)
    per_char = list(polyphone.PER_CHAR_DENSE)
    ids = np.zeros((len(examples), k_max, n_keys), dtype=np.int64)
    weights = np.zeros((len(examples), k_max, n_keys), dtype=np.float32)
    dense = np.zeros((len(examples), k_max, n_dense), dtype=np.float32)
    valid = np.zeros((len(examples), k_max), dtype=bool)
    for i, e in enumerate(examples):
        for k, row in enumerate(e.keys):
            ids[i, k] = [polyphone.hash_key(key, mask) for key in row]
            weights[i, k, : len(per_char)] = e.dense[k, per_char]
            weights[i, k, len(per_char) :] = 1.0
            if drop:
                weights[i, k] *= [not _dropped(key, drop) for key in row]
            dense[i, k] = e.dense[k]
            valid[i, k] = True
    return {
        "ids": torch.from_numpy(ids),
        "weights": torch.from_numpy(weights),
        "dense": torch.from_numpy(dense),
        "valid": torch.from_numpy(valid),
        "labels": torch.tensor([e.label for e in examples]),
    }


def train(data: dict[str, object], size: int, l2: float, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from tts_server.inference.frontend import polyphone

    torch.manual_seed(0)
    ids, weights, dense, valid, labels = (data[k] for k in ("ids", "weights", "dense", "valid", "labels"))
    w_dense = torch.zeros(len(polyphone.DENSE_NAMES), requires_grad=True)
    table = torch.zeros(size, requires_grad=True)
    # Start from "trust g2pM": the shared weight on its log-probability.
    with torch.no_grad():
        w_dense[0] = 1.0
    opt = torch.optim.Adam([w_dense, table], lr=0.05)
    for epoch in range(epochs):
        opt.zero_grad()
        scores = dense @ w_dense + (table[ids] * weights).sum(-1)  # type: ignore[operator,index]
        scores = scores.masked_fill(~valid, float("-inf"))  # type: ignore[operator]
        loss = torch.nn.functional.cross_entropy(scores, labels)  # type: ignore[arg-type]
        penalty = l2 * (table.pow(2).sum() + (w_dense - torch.eye(len(w_dense))[0]).pow(2).sum())
        (loss + penalty).backward()
        opt.step()
        if epoch % 50 == 0 or epoch == epochs - 1:
            acc = (scores.argmax(-1) == labels).float().mean().item()
            print(f"  epoch {epoch:4d} loss {loss.item():.4f} train acc {acc * 100:.2f}%")
    return w_dense.detach().numpy(), table.detach().numpy()


def accuracy(examples: list[Example], w_dense: np.ndarray, table: np.ndarray, drop: tuple[str, ...] = ()) -> float:
    from tts_server.inference.frontend import polyphone

    mask = table.size - 1
    per_char = list(polyphone.PER_CHAR_DENSE)
    correct = 0
    for e in examples:
        scores = e.dense @ w_dense
        for k, row in enumerate(e.keys):
            ids = [polyphone.hash_key(key, mask) for key in row]
            keep = np.array([not _dropped(key, drop) for key in row], dtype=np.float32)
            values = np.concatenate([e.dense[k, per_char], np.ones(len(row) - len(per_char))]) * keep
            scores[k] += values @ table[ids]
        correct += int(np.argmax(scores)) == e.label
    return correct / len(examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="append", required=True, help="PREFIX of PREFIX.sent / PREFIX.lb")
    parser.add_argument("--exclude", action="append", default=[], help="drop training sentences found here")
    parser.add_argument("--eval", help="PREFIX of held-out sentences to report (CPP dev)")
    parser.add_argument("--bits", type=int, default=18, help="log2 of the hashed table size")
    parser.add_argument("--l2", type=float, nargs="+", default=[1e-5], help="L2 strengths to try (eval picks)")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--drop", nargs="*", default=[], help="feature prefixes to leave out (D: per-char dense)")
    parser.add_argument("--cache", type=Path, help="pickle of the extracted examples (made if missing)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "src" / "tts_server"
                        / "inference" / "frontend" / "polyphone_stack.npz")  # fmt: skip
    args = parser.parse_args()

    if args.cache is not None and args.cache.exists():
        raw_train, raw_held = pickle.loads(args.cache.read_bytes())
    else:
        excluded = {text for prefix in args.exclude for text, _i, _l in read_pairs(prefix)}
        pairs = [p for prefix in args.train for p in read_pairs(prefix) if p[0] not in excluded]
        t0 = time.perf_counter()
        raw_train = extract(pairs)
        print(f"train: {len(raw_train)} examples from {len(pairs)} sentences ({time.perf_counter() - t0:.0f} s)")
        raw_held = extract(read_pairs(args.eval)) if args.eval else []
        if args.cache is not None:
            args.cache.write_bytes(pickle.dumps((raw_train, raw_held)))
    examples, held_out = featurise(raw_train), featurise(raw_held)
    drop = tuple(args.drop)
    data = tensors(examples, (1 << args.bits) - 1, drop)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for l2 in args.l2:
        w_dense, table = train(data, 1 << args.bits, l2, args.epochs)
        if held_out:
            acc = accuracy(held_out, w_dense, table, drop)
            print(f"l2 {l2:g}: held-out {acc * 100:.2f}% of {len(held_out)} (polyphones g2pM knows)")
        else:
            acc = 0.0
        if best is None or acc > best[0]:
            best = (acc, w_dense, table)
    assert best is not None
    _acc, w_dense, table = best
    print("dense weights:", dict(zip(__import__("tts_server.inference.frontend.polyphone", fromlist=["x"])
                                     .DENSE_NAMES, np.round(w_dense, 3), strict=True)))  # fmt: skip
    np.savez_compressed(args.out, dense=w_dense.astype(np.float32), table=table.astype(np.float16))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
