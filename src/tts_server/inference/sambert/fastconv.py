"""Fast 1-D convolution for the vocoder: bilinear algorithms along time (Winograd minimal filtering and DFT
overlap-save), on each dilation's interleaved lattice.

A dilated correlation ``y[t] = sum_j W_j x[t + j d]`` (``W_j``: [C_out, C_in]) splits into ``d`` undilated
correlations, one per residue ``t mod d`` (the dilation's interleaved lattice). On each lattice, ``m`` consecutive
outputs come from ``a = m + r - 1`` consecutive inputs with ``a`` channel-mixing products instead of ``m * r``:

    Y = A^T [ (G W) (B^T X) ]      (the product is one [C_out, C_in] matrix per transform row)

derived here from Toom-Cook linear convolution by evaluation at ``a - 1`` finite points and infinity: for the linear
convolution ``s = g * h`` (``g``: r taps, ``h``: m samples), ``s = V^-1 [(E_r g) . (E_m h)]`` with ``E_n`` the
``a x n`` evaluation matrix and ``V = E_a``. The correlation of ``x`` with ``g`` is the transpose of ``h -> g * h``,
so ``B^T = V^-T``, ``G = E_r`` and ``A^T = E_m^T``. Each row ``k`` of ``B^T`` is scaled to max abs 1 and the scale
moved into row ``k`` of ``G`` (the weights, transformed once in float64). Points near 0 and 1 in magnitude keep the
transforms well conditioned in float32 for small tiles; larger tiles lose accuracy fast (F(4, 7) already errs
by about 5e-5 on unit-scale inputs).

``fourier_matrices`` gives the same kind of algorithm from a real DFT of size ``n`` (overlap-save): orthogonal, so
accurate at any tile size, with complex products per bin, which Gauss's three-multiplication trick turns into
``3 n / 2 - 1`` real products per ``n - r + 1`` outputs; the input transform takes ``n`` GEMM rows (the real and
imaginary parts), the Gauss sums ``Xr + Xi`` come from one addition.

``BilinearConv`` runs any of them on channels-last [T, C] signals: the tiles of every lattice are unfolded and
transformed by one GEMM, each transform row's [C_in, C_out] product is one batch of a ``bmm``, and the output
transform is one more GEMM; all in blocks of tiles small enough to stay in the core's cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import torch
from torch import Tensor

#: Finite evaluation points, in the order they are taken (the first ``a - 1`` for ``a`` products; the last point of
#: every set is infinity, added by ``winograd_matrices``): small integers and simple fractions near 1 in magnitude.
POINTS: tuple[Fraction, ...] = (
    Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-1, 2), Fraction(2), Fraction(-2),
    Fraction(3, 2), Fraction(-3, 2), Fraction(2, 3), Fraction(-2, 3), Fraction(1, 4), Fraction(-1, 4),
    Fraction(3, 4), Fraction(-3, 4), Fraction(4), Fraction(-4),
)


def _evaluation(points: tuple[Fraction, ...], n: int) -> list[list[Fraction]]:
    """Rows ``[1, p, ..., p^(n-1)]`` per finite point, then ``[0, ..., 0, 1]`` (the leading coefficient)."""
    rows = [[p**i for i in range(n)] for p in points]
    rows.append([Fraction(0)] * (n - 1) + [Fraction(1)])
    return rows


def _inverse(a: list[list[Fraction]]) -> list[list[Fraction]]:
    """Exact Gauss-Jordan inverse of a square matrix of fractions."""
    n = len(a)
    work = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(a)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if work[r][col] != 0)
        work[col], work[pivot] = work[pivot], work[col]
        inv = 1 / work[col][col]
        work[col] = [v * inv for v in work[col]]
        for r in range(n):
            if r != col and work[r][col] != 0:
                f = work[r][col]
                work[r] = [v - f * p for v, p in zip(work[r], work[col], strict=True)]
    return [row[n:] for row in work]


def winograd_matrices(m: int, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(A^T [m, a], G [a, r], B^T [a, a])`` in float64 for F(m, r), ``a = m + r - 1``: for any ``x`` of length
    ``a`` and ``g`` of length ``r``, ``A^T ((G g) * (B^T x))[i] == sum_j g[j] x[i + j]``."""
    a = m + r - 1
    if a - 1 > len(POINTS):
        raise ValueError(f"no evaluation points for F({m}, {r})")
    points = POINTS[: a - 1]
    v_inv = _inverse(_evaluation(points, a))
    bt = [[v_inv[i][k] for i in range(a)] for k in range(a)]  # V^-T
    g = _evaluation(points, r)
    at = [[row[i] for row in _evaluation(points, m)] for i in range(m)]  # E_m^T
    for k in range(a):
        scale = max(abs(v) for v in bt[k])
        bt[k] = [v / scale for v in bt[k]]
        g[k] = [v * scale for v in g[k]]

    def tensor(rows: list[list[Fraction]]) -> Tensor:
        return torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)

    return tensor(at), tensor(g), tensor(bt)


def fourier_matrices(n: int, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(A^T [m, p], G [p, r], B^T [p, n])`` in float64 for overlap-save correlation by a real DFT of size ``n``
    (even, at least ``r``): ``m = n - r + 1`` outputs per tile of ``n`` inputs, ``p = 3 n / 2 - 1`` products.

    Circular correlation is ``Y = X conj(G)`` per bin ``k`` (``X``, ``G``: DFTs of the tile and of the kernel),
    and its first ``m`` outputs are the linear ones. With ``X = Xr + i Xi``, ``conj(G) = Gr + i Gs``: bins 0 and
    ``n / 2`` are real (``Yr = Xr Gr``); the others take ``P1 = Xr Gr``, ``P2 = Xi Gs``,
    ``P3 = (Xr + Xi)(Gr + Gs)``, ``Yr = P1 - P2``, ``Yi = P3 - P1 - P2``, and the inverse real DFT
    ``y_i = sum_k w_k (Yr_k cos - Yi_k sin)(2 pi k i / n) / n`` (``w_k`` = 1 at bins 0 and ``n / 2``, else 2)
    folds those sums into ``A^T``.
    """
    if n % 2 or n < r:
        raise ValueError(f"DFT size {n} must be even and at least the kernel length {r}")
    h, m = n // 2, n - r + 1
    k = torch.arange(h + 1, dtype=torch.float64)[:, None]
    theta = 2 * torch.pi * k * torch.arange(n, dtype=torch.float64)[None, :] / n  # [h + 1, n]
    cos, sin = torch.cos(theta), torch.sin(theta)
    mid = slice(1, h)
    bt = torch.cat([cos, -sin[mid], cos[mid] - sin[mid]])
    g = torch.cat([cos[:, :r], sin[mid, :r], cos[mid, :r] + sin[mid, :r]])
    phi_cos, phi_sin = cos[:, :m].t(), sin[:, :m].t()  # [m, h + 1]: the angle 2 pi k i / n for output i
    at = torch.cat([
        torch.cat([phi_cos[:, :1], 2 * (phi_cos[:, mid] + phi_sin[:, mid]), phi_cos[:, h:]], dim=1),
        2 * (phi_sin[:, mid] - phi_cos[:, mid]),
        -2 * phi_sin[:, mid],
    ], dim=1) / n
    return at, g, bt


@dataclass(frozen=True)
class Algorithm:
    """A fast algorithm for one convolution: Winograd F(``size``, r) (``size`` outputs per tile) or DFT
    overlap-save of size ``size``."""

    kind: Literal["winograd", "fourier"]
    size: int

    def label(self, kernel: int) -> str:
        """The name ``BilinearConv`` gives it for a kernel of ``kernel`` taps."""
        return f"F({self.size},{kernel})" if self.kind == "winograd" else f"DFT{self.size}"

    def products(self, kernel: int) -> int:
        """Channel-mixing products per tile: the transformed kernel holds this many [C_in, C_out] matrices."""
        return self.size + kernel - 1 if self.kind == "winograd" else 3 * self.size // 2 - 1

    def build(self, weight: Tensor, bias: Tensor | None, dilation: int) -> BilinearConv:
        if self.kind == "winograd":
            return BilinearConv.winograd(weight, bias, dilation, self.size)
        return BilinearConv.fourier(weight, bias, dilation, self.size)


class BilinearConv:
    """A valid dilated correlation with weight ``[C_out, C_in, r]`` on ``[T + (r - 1) d, C_in]`` row-major inputs
    (channels-last, time-major), giving ``[T, C_out]``, by ``Y = A^T [(G W) (B^T X)]`` per tile of ``m``
    outputs on each of the ``d`` lattices. ``name`` says which algorithm (for tables and logs). ``sums``
    ``(count, first, second)``: the last ``count`` rows of ``B^T`` are rows ``first + i`` plus rows ``second + i``
    (DFT: Gauss's ``Xr + Xi``), so they are added from the transformed rows instead of multiplied out."""

    def __init__(self, weight: Tensor, bias: Tensor | None, dilation: int,
                 matrices: tuple[Tensor, Tensor, Tensor], name: str, sums: tuple[int, int, int] = (0, 0, 0)) -> None:
        at, g, bt = matrices
        c_out, c_in, r = weight.shape
        if g.shape[1] != r:
            raise ValueError(f"{name}: matrices for {g.shape[1]} taps, kernel has {r}")
        self.name = name
        self.m, self.p, self.window = at.shape[0], bt.shape[0], bt.shape[1]
        self.r, self.dilation, self.c_in, self.c_out = r, dilation, c_in, c_out
        dtype = weight.dtype
        # U[k] = sum_j G[k, j] W_j^T: [p, C_in, C_out]
        self.u = torch.einsum("kj,oij->kio", g, weight.detach().double()).to(dtype).contiguous()
        self.at = at.to(dtype)
        count, first, second = sums
        if count and not torch.allclose(bt[self.p - count :], bt[first : first + count] + bt[second : second + count],
                                        rtol=0, atol=1e-12):
            raise ValueError(f"{name}: the last {count} rows of B^T are not the sums of rows from {first} and {second}")
        self.sums = sums
        self.bt = bt[: self.p - count].to(dtype).contiguous()
        self.bias = None if bias is None else bias.detach().to(dtype)

    @classmethod
    def winograd(cls, weight: Tensor, bias: Tensor | None, dilation: int, m: int) -> BilinearConv:
        r = weight.shape[-1]
        return cls(weight, bias, dilation, winograd_matrices(m, r), f"F({m},{r})")

    @classmethod
    def fourier(cls, weight: Tensor, bias: Tensor | None, dilation: int, n: int) -> BilinearConv:
        # The Gauss rows cos - sin = the real part's row + the imaginary part's (see fourier_matrices): a third of
        # the forward GEMM's rows become one addition.
        h = n // 2
        return cls(weight, bias, dilation, fourier_matrices(n, weight.shape[-1]), f"DFT{n}", (h - 1, 1, h + 1))

    #: Bytes of transformed input per block of tiles: small enough for the block's intermediates to stay in a
    #: core's L2 cache (1-2 MiB), large enough that the per-call overhead stays small.
    chunk_bytes = 1 << 20

    def tiles(self, t: int) -> int:
        """Output tiles per lattice for ``t`` outputs."""
        return -(-t // (self.m * self.dilation))

    def rows_needed(self, t: int) -> int:
        """Input rows the tiles of ``t`` outputs read: the ``(r - 1) d`` rows of context, the ``t`` rows, and zeros
        up to the end of the last tile."""
        return ((self.tiles(t) - 1) * self.m + self.window) * self.dilation

    def __call__(self, xp: Tensor, t: int | None = None, chunk_bytes: int | None = None) -> Tensor:
        """``xp`` [T + (r - 1) d, C_in] (contiguous) -> [T, C_out], in blocks of output tiles whose transformed
        inputs take about ``chunk_bytes`` (default: the class's, or 4/3 of the transformed kernel where that is
        more). With ``t`` given, ``xp`` holds at least ``rows_needed(t)`` rows (the caller wrote the zero tail, e.g.
        beside its activation: no copy here)."""
        if chunk_bytes is None:
            # Every block streams the whole transformed kernel through the cache once: with blocks at least 4/3 of
            # its size that stays a small share (128 channels, DFT32: 3 MiB of kernel, one 4 MiB block for a
            # 3080-sample stage instead of four 1 MiB ones: 1.1x on the layer).
            chunk_bytes = max(self.chunk_bytes, 4 * self.u.numel() * self.u.element_size() // 3)
        m, d, c = self.m, self.dilation, self.c_in
        if t is None:
            t = xp.shape[0] - (self.r - 1) * d
            need = self.rows_needed(t)
            if need > xp.shape[0]:
                xp = torch.cat([xp, xp.new_zeros(need - xp.shape[0], c)])
        elif xp.shape[0] < self.rows_needed(t):
            raise ValueError(f"{self.name}: {t} outputs read {self.rows_needed(t)} rows, got {xp.shape[0]}")
        n = self.tiles(t)
        out = xp.new_empty(n * m * d, self.c_out)
        block = max(1, chunk_bytes // (self.p * d * max(c, self.c_out) * xp.element_size()))
        for n0 in range(0, n, block):
            nb = min(block, n - n0)
            self._block(xp, n0, nb, out[n0 * m * d : (n0 + nb) * m * d])
        return out[:t]

    def _block(self, xp: Tensor, n0: int, n: int, out: Tensor) -> None:
        m, w, d, c = self.m, self.window, self.dilation, self.c_in
        # tiles[i, res, tile, :] = xp[((n0 + tile) * m + i) * d + res]: unfolded to [window, d * n * C] (a copy)
        # and transformed by one GEMM.
        tiles = xp.as_strided((w, d, n, c), (d * c, c, m * d * c, 1), n0 * m * d * c)
        count, first, second = self.sums
        rows = self.p - count
        v = xp.new_empty(self.p, d * n * c)
        torch.mm(self.bt, tiles.reshape(w, d * n * c), out=v[:rows])
        if count:
            torch.add(v[first : first + count], v[second : second + count], out=v[rows:])
        prod = torch.bmm(v.view(self.p, d * n, c), self.u)  # [p, d * n, C_out]
        # Output row (tile, j, res) is time ((n0 + tile) * m + j) * d + res.
        y = torch.mm(self.at, prod.view(self.p, -1)).view(m, d, n, self.c_out).permute(2, 0, 1, 3)
        # One strided pass from the transform's [j, res, tile] order into time order (plus the bias).
        if self.bias is not None:
            torch.add(y, self.bias, out=out.view(n, m, d, self.c_out))
        else:
            out.view(n, m, d, self.c_out).copy_(y)
