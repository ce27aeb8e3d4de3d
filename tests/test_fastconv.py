"""Fast convolution for the vocoder (issue 12, item 1): Winograd and DFT overlap-save bilinear algorithms, and the
vocoder's use of them (whole sentence and chunked streaming) against direct convolution."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import PARITY_DIR, unavailable
from tts_server.config import load_settings
from tts_server.inference.sambert.engine import load_sambert_engine
from tts_server.inference.sambert.fastconv import Algorithm, BilinearConv, fourier_matrices, winograd_matrices
from tts_server.inference.sambert.vocoder import (
    FAST_CONV_MIN_T,
    HifiGanConfig,
    HifiGanGenerator,
    fast_conv_for,
)

#: The full-size vocoder (the parity model and the published voices): 256 channels halved per upsampling stage.
FULL_CHANNELS = (128, 64, 32, 16)
FULL_KERNELS = (3, 7, 11)
FULL_DILATIONS = (1, 3, 5, 7)


def _correlate(x: torch.Tensor, g: torch.Tensor, m: int) -> torch.Tensor:
    return torch.stack([(x[i : i + g.shape[0]] * g).sum() for i in range(m)])


@pytest.mark.parametrize(("m", "r"), [(2, 3), (4, 3), (6, 3), (2, 7), (4, 7), (6, 7), (2, 11)])
def test_winograd_matrices_compute_the_correlation(m: int, r: int) -> None:
    at, g, bt = winograd_matrices(m, r)
    assert at.shape == (m, m + r - 1)
    assert g.shape == (m + r - 1, r)
    assert bt.shape == (m + r - 1, m + r - 1)
    gen = torch.Generator().manual_seed(m * 100 + r)
    for _ in range(3):
        x = torch.randn(m + r - 1, dtype=torch.float64, generator=gen)
        w = torch.randn(r, dtype=torch.float64, generator=gen)
        torch.testing.assert_close(at @ ((g @ w) * (bt @ x)), _correlate(x, w, m), rtol=0, atol=1e-9)


@pytest.mark.parametrize(("n", "r"), [(16, 3), (16, 7), (32, 7), (32, 11), (64, 11)])
def test_fourier_matrices_compute_the_correlation(n: int, r: int) -> None:
    at, g, bt = fourier_matrices(n, r)
    m, p = n - r + 1, 3 * n // 2 - 1
    assert at.shape == (m, p)
    assert g.shape == (p, r)
    assert bt.shape == (p, n)
    gen = torch.Generator().manual_seed(n * 100 + r)
    for _ in range(3):
        x = torch.randn(n, dtype=torch.float64, generator=gen)
        w = torch.randn(r, dtype=torch.float64, generator=gen)
        torch.testing.assert_close(at @ ((g @ w) * (bt @ x)), _correlate(x, w, m), rtol=0, atol=1e-9)


def test_fourier_adds_the_gauss_rows() -> None:
    """DFT16: the GEMM makes the 16 real and imaginary rows, the 7 rows Xr + Xi are added; not so for wrong sums."""
    weight = torch.randn(4, 3, 7)
    fast = BilinearConv.fourier(weight, None, 1, 16)
    assert fast.bt.shape == (16, 16)
    assert fast.sums == (7, 1, 9)
    with pytest.raises(ValueError, match="sums"):
        BilinearConv(weight, None, 1, fourier_matrices(16, 7), "DFT16", (7, 1, 8))


def test_fourier_rejects_a_size_below_the_kernel() -> None:
    with pytest.raises(ValueError, match="DFT size"):
        fourier_matrices(8, 11)
    with pytest.raises(ValueError, match="DFT size"):
        fourier_matrices(15, 3)


def _direct(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int) -> torch.Tensor:
    return F.conv1d(rows.t()[None], weight, bias, dilation=dilation)[0].t()


def _used_shapes() -> list[tuple[int, int, int, int, Algorithm]]:
    """(C_in, C_out, kernel, dilation, algorithm) of every fast convolution of the full-size vocoder: the residual
    blocks', and the polyphase upsampling convolutions where a rule would take them (256 -> 10 phases * 128, 2 taps;
    128 -> 5 phases * 64, 3 taps)."""
    blocks = [(c, c, k, d) for c in FULL_CHANNELS for k in FULL_KERNELS for d in FULL_DILATIONS]
    return [(c_in, c_out, k, d, alg) for c_in, c_out, k, d in [*blocks, (256, 1280, 2, 1), (128, 320, 3, 1)]
            if (alg := fast_conv_for(c_in, c_out, k)) is not None]


def test_the_full_size_vocoder_uses_fast_convolutions() -> None:
    used = _used_shapes()
    assert len(used) >= 8


@pytest.mark.parametrize(("c_in", "c_out", "kernel", "dilation", "alg"), _used_shapes())
def test_fast_conv_equals_direct_for_every_used_shape(c_in: int, c_out: int, kernel: int, dilation: int,
                                                       alg: Algorithm) -> None:
    torch.manual_seed(c_in * 1000 + kernel * 10 + dilation)
    conv = torch.nn.Conv1d(c_in, c_out, kernel, dilation=dilation)  # the modules' default initialisation
    weight, bias = conv.weight.detach(), conv.bias.detach()
    fast = alg.build(weight, bias, dilation)
    assert fast.name == alg.label(kernel)
    assert fast.u.shape == (alg.products(kernel), c_in, c_out)
    for t in (FAST_CONV_MIN_T, 1337):
        rows = torch.randn(t + (kernel - 1) * dilation, c_in)
        out = fast(rows)
        assert out.shape == (t, c_out)
        direct = _direct(rows, weight, bias, dilation)
        assert float((out - direct).abs().max()) <= 1e-5
        # Blocks of a few tiles (one tile: the smallest) are as accurate; the orthogonal DFT gives the same result
        # (Winograd's transforms amplify the GEMMs' blocking-dependent rounding, to a few 1e-6).
        blocked = fast(rows, chunk_bytes=1)
        assert float((blocked - direct).abs().max()) <= 1e-5
        if alg.kind == "fourier":
            torch.testing.assert_close(blocked, out, rtol=0, atol=1e-6)
        # The caller's buffer with its zero tail (as the vocoder passes it) gives the same result as the copy.
        padded = torch.cat([rows, rows.new_zeros(fast.rows_needed(t) - rows.shape[0], c_in)])
        torch.testing.assert_close(fast(padded, t), out, rtol=0, atol=0)
        with pytest.raises(ValueError, match="rows"):
            fast(padded[:-1], t)


@pytest.mark.parametrize(("m", "kernel", "dilation"), [(4, 3, 1), (4, 3, 5), (2, 7, 3)])
def test_winograd_conv_equals_direct(m: int, kernel: int, dilation: int) -> None:
    torch.manual_seed(m + kernel + dilation)
    conv = torch.nn.Conv1d(32, 24, kernel, dilation=dilation)
    weight, bias = conv.weight.detach(), conv.bias.detach()
    rows = torch.randn(301 + (kernel - 1) * dilation, 32)
    out = BilinearConv.winograd(weight, bias, dilation, m)(rows)
    assert out.shape == (301, 24)
    assert float((out - _direct(rows, weight, bias, dilation)).abs().max()) <= 1e-5


def _generator() -> HifiGanGenerator:
    """A causal generator with the full-size model's widths where the fast path applies (64 channels after the
    first upsampling, kernels 3, 7 and 11), random weights."""
    cfg = HifiGanConfig(in_channels=20, out_channels=1, channels=128, kernel_size=7, upsample_scales=(4, 2),
                        upsample_kernel_sizes=(8, 4), resblock_kernel_sizes=(3, 7, 11),
                        resblock_dilations=((1, 3), (1, 5), (3, 7)), repeat_upsample=True, bias=True, causal=True,
                        negative_slope=0.1, use_weight_norm=False)
    torch.manual_seed(7)
    gen = HifiGanGenerator(cfg).eval()
    gen.prepare()
    return gen


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_generator_fast_path_equals_direct_whole_and_streamed() -> None:
    gen = _generator()
    mel = torch.randn(600, 20)
    with torch.inference_mode():
        assert gen.use_fast_conv(False) == 0
        direct = gen(mel)
        # Stage 1 (64 channels): kernels 7 and 11, two convolutions each per dilation; stage 2 (32): kernel 11.
        assert gen.use_fast_conv(True) == 12
        fast = gen(mel)
        assert float((fast - direct).abs().max()) <= 1e-5
        # Chunks below and above FAST_CONV_MIN_T samples at the fast stage (T = 4 * frames): a mix of direct and
        # fast convolutions sharing the carried causal state.
        stream = gen.stream()
        assert stream is not None
        pieces = [stream.push(mel[a:b]) for a, b in ((0, 7), (7, 530), (530, 543), (543, 600))]
        assert float((torch.cat(pieces) - direct).abs().max()) <= 1e-5
        assert not torch.equal(fast, direct)  # the fast path really ran


def test_the_modules_share_the_plans_weights() -> None:
    """After prepare the residual blocks' (and pre/post) convolution modules hold views of the plan's channels-last
    kernels, not a second copy, and computing with them still gives the plan's output."""
    gen = _generator()
    plan = gen._nwc
    assert plan is not None

    def storage(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    assert storage(gen.conv_pre.conv1d.weight) == storage(plan.pre[0])
    assert storage(gen.conv_post.conv1d.weight) == storage(plan.post[0])
    block = gen._blocks[2]
    assert storage(block.convs2[1].conv1d.weight) == storage(plan.blocks[2][1][1][0])
    mel = torch.randn(40, 20)
    with torch.inference_mode():
        modules = gen._generate(mel.t()[None], None)  # the modules' channels-first path, fused upsampling
        assert float((modules - gen(mel)).abs().max()) <= 1e-5


@pytest.mark.usefixtures("one_thread")
def test_more_threads_run_direct() -> None:
    gen = _generator()
    mel = torch.randn(300, 20)
    with torch.inference_mode():
        gen.use_fast_conv(False)
        torch.set_num_threads(2)
        direct = gen(mel)
        assert gen.use_fast_conv(True) == 12
        torch.testing.assert_close(gen(mel), direct, rtol=0, atol=0)


def test_bf16_drops_the_fast_path() -> None:
    gen = _generator()
    assert gen._nwc is not None
    gen._nwc.to(torch.bfloat16)
    assert all(p[4] is None for p in gen._nwc.fast_plans())


@pytest.mark.parametrize("threads", [1, 2])
def test_engine_keeps_fast_kernels_only_at_one_thread(threads: int) -> None:
    if not (PARITY_DIR / "model").is_dir():
        unavailable(f"the parity set is not at {PARITY_DIR}")
    before = torch.get_num_threads()
    try:
        engine = load_sambert_engine(load_settings(model={"model_dir": str(PARITY_DIR / "model"),
                                                          "torch_threads": threads}))
        plan = engine._voices["zhitian_emo"].vocoder._nwc
        assert plan is not None
        fast = sum(p[4] is not None for p in plan.fast_plans())
        # Stage 1 (128 channels) and stage 2 (64): kernels 7 and 11, 8 convolutions each; stage 3 (32): kernel 11.
        assert fast == (40 if threads == 1 else 0)
    finally:
        torch.set_num_threads(before)
