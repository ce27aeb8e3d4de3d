"""What the parity suites (built-in and personal voices) share: reading a reference ``cases.npz`` and checking a
case's symbol ids and rounded durations before the float comparisons each suite makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from tts_server.inference.sambert.acoustic import AcousticOutput
from tts_server.inference.sambert.engine import SambertVoice

Cases = dict[str, npt.NDArray[np.generic]]


def load_cases(path: Path) -> Cases:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def case_arrays(cases: Cases, case: str) -> Cases:
    """The arrays of one case, keyed without the ``case/`` prefix."""
    return {k.split("/", 1)[1]: v for k, v in cases.items() if k.startswith(case + "/")}


def max_abs(a: torch.Tensor | npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> float:
    arr = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    assert arr.shape == b.shape
    return float(np.max(np.abs(arr.astype(np.float64) - b.astype(np.float64)))) if b.size else 0.0


def checked_acoustic(voice: SambertVoice, ref: Cases, streams: tuple[str, ...]) -> AcousticOutput:
    """Encode the case's symbols (ids must be identical), run the acoustic model (under inference mode, as the
    caller holds it) and require the durations as the length regulator rounds them to be identical."""
    encoded = voice.unit.encode(str(ref["symbols"]))
    for stream in streams:
        np.testing.assert_array_equal(getattr(encoded, stream), ref[f"ids_{stream}"], err_msg=stream)
    out = voice.acoustic(encoded)
    ours = (torch.exp(out.log_duration) - 1 + 0.5).long().numpy()
    theirs = (torch.exp(torch.from_numpy(ref["log_duration"])) - 1 + 0.5).long().numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert out.num_frames == int(ref["lr_length_rounded"])
    return out
