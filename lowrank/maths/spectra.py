"""Singular-value spectra of attention matrices and the paper's Figure 1 statistics.

Pure functions on tensors. Conventions: ``s`` holds singular values in descending order along
the last axis; indices reported to users are 1-based, like the paper's "128th singular value".
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch

# How singular values are computed (benchmarks/bench_spectrum.py chose the default):
# "gram": sqrt of the eigenvalues of P P^T in float64 (LAPACK syevd); "gesdd": svdvals of P
# in float32 (LAPACK gesdd / cuSOLVER gesvdj).
SvdMethod = Literal["gram", "gesdd"]
DEFAULT_SVD: SvdMethod = "gram"


def _kernel(x: torch.Tensor, method: SvdMethod, slice_size: int = 2) -> torch.Tensor:
    if x.device.type == "cpu" and x.shape[0] > slice_size:
        # on the CPU a few matrices at a time keep the float64 temporaries small and
        # cache-resident (measured: 9% faster than whole chunks on 512 x 512, less memory);
        # a GPU gets the whole batch in one batched call
        parts = [_kernel(x[i : i + slice_size], method) for i in range(0, x.shape[0], slice_size)]
        return torch.cat(parts)
    if method == "gram":
        x64 = x.to(torch.float64)
        eig = torch.linalg.eigvalsh(x64 @ x64.mT)  # ascending
        return eig.clamp_min(0).sqrt().flip(-1)
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return torch.linalg.svdvals(work).to(torch.float64)


def default_workers() -> int:
    """CPU threads for batched singular values: one matrix per core."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def singular_values(
    probs: torch.Tensor, method: SvdMethod = DEFAULT_SVD, workers: int = 1
) -> torch.Tensor:
    """Singular values of a batch of square matrices, descending, as float64.

    Args:
        probs: (..., m, m) attention probabilities, any float dtype (half precision is
            computed in float32 or float64: LAPACK and cuSOLVER have no half kernels).
        method: ``gram`` (eigenvalues of P P^T in float64; on real attention c is within
            1e-9 of float64 SVD) or ``gesdd`` (float32 SVD; within 1e-7).
        workers: on the CPU, split the batch over this many threads with one LAPACK thread
            each (faster than LAPACK's own threading for 512 x 512 matrices on 2 cores).

    Returns:
        (..., m) float64 singular values ``s_1 >= ... >= s_m >= 0``.
    """
    shape = probs.shape
    flat = probs.reshape(-1, shape[-2], shape[-1])
    if workers <= 1 or flat.shape[0] < 2 or flat.device.type != "cpu":
        return _kernel(flat, method).reshape(*shape[:-1])
    chunks = list(torch.tensor_split(flat, min(workers, flat.shape[0])))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(len(chunks)) as pool:
            parts = list(pool.map(lambda c: _kernel(c, method), chunks))
    finally:
        torch.set_num_threads(threads)
    return torch.cat(parts).reshape(*shape[:-1])


def pad_spectrum(s: torch.Tensor, n: int) -> torch.Tensor:
    """Embed spectra of m x m blocks into length n with zeros (an m x m block inside an
    n x n zero matrix has the same nonzero singular values).

    Args:
        s: (..., m) singular values, m <= n.

    Returns:
        (..., n) with ``s[..., m:] = 0``.
    """
    m = s.shape[-1]
    if m == n:
        return s
    return torch.nn.functional.pad(s, (0, n - m))


def cumulative(s: torch.Tensor) -> torch.Tensor:
    """Normalized cumulative singular values ``c_i = sum_{j<=i} s_j / sum_j s_j``.

    Args:
        s: (..., n) singular values (any non-negative, descending order assumed).

    Returns:
        (..., n) float64, non-decreasing, ``c_n = 1`` (all ones for an all-zero spectrum).
    """
    s = s.to(torch.float64)
    total = s.sum(dim=-1, keepdim=True)
    csum = torch.cumsum(s, dim=-1)
    positive = total > 0
    return torch.where(positive, csum / torch.where(positive, total, 1.0), 1.0)


def rank_for(c: torch.Tensor, fraction: float) -> torch.Tensor:
    """Smallest 1-based index i with ``c_i >= fraction`` (float64).

    Args:
        c: (..., n) cumulative curves.

    Returns:
        (...,) the rank needed for that share of the nuclear norm.
    """
    # A tiny slack keeps rounding in the cumulative sum from pushing the answer one up.
    hit = c >= fraction - 1e-12
    return (hit.to(torch.int64).argmax(dim=-1) + 1).to(torch.float64)


def effective_rank(s: torch.Tensor) -> torch.Tensor:
    """Roy & Vetterli (2007) effective rank ``exp(H(p))``, ``p = s / sum s``, ``0 log 0 = 0``.

    Args:
        s: (..., n) singular values.

    Returns:
        (...,) float64 in [1, n] (1 for an all-zero spectrum).
    """
    s = s.to(torch.float64)
    total = s.sum(dim=-1, keepdim=True)
    p = torch.where(total > 0, s / torch.where(total > 0, total, 1.0), 0.0)
    entropy = -torch.where(p > 0, p * torch.log(torch.where(p > 0, p, 1.0)), 0.0)
    return torch.exp(entropy.sum(dim=-1))


def stable_rank(s: torch.Tensor) -> torch.Tensor:
    """Stable rank ``sum s^2 / s_1^2`` (float64, in [1, rank]).

    Args:
        s: (..., n) singular values, descending.
    """
    s = s.to(torch.float64)
    top = s[..., 0]
    ratio = (s / torch.where(top > 0, top, 1.0)[..., None]) ** 2  # scale-free, no underflow
    return torch.where(top > 0, ratio.sum(dim=-1), 1.0)


SUMMARY_NAMES = ("c_at_index", "rank90", "rank99", "effective_rank", "stable_rank")


def summaries(s: torch.Tensor, c: torch.Tensor, index: int) -> torch.Tensor:
    """Per-matrix summaries stacked on a last axis, in :data:`SUMMARY_NAMES` order.

    Args:
        s: (..., n) singular values; c: (..., n) their cumulative curve;
        index: 1-based position read for ``c_at_index`` (128 in the paper).

    Returns:
        (..., 5) float64.
    """
    return torch.stack(
        [
            c[..., index - 1],
            rank_for(c, 0.90),
            rank_for(c, 0.99),
            effective_rank(s),
            stable_rank(s),
        ],
        dim=-1,
    )
