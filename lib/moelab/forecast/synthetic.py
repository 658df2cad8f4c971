"""Synthetic series for pretraining: KernelSynth and TSMixup, as the Chronos paper describes them.

Ansari et al. 2024, "Chronos: Learning the Language of Time Series" (arXiv 2403.07815),
section 4 and appendix A:

* **KernelSynth** (their Algorithm 2) draws a Gaussian-process series whose covariance is a
  random composition of basis kernels: pick ``j ~ U{1, ..., max_kernels}`` kernels from a
  bank (with replacement), join them one after another with ``+`` or ``×`` (each chosen
  with probability 1/2), and sample ``GP(0, k)`` on ``length`` evenly spaced points of
  [0, 1]. The bank holds linear, RBF, rational-quadratic and periodic kernels (periods of
  common seasonalities: daily data's 7, monthly's 12, hourly's 24 and 168, ...), a constant
  and white noise, each with a few fixed hyperparameters, as in the paper's implementation.
* **TSMixup** (their Algorithm 1) mixes ``k ~ U{1, ..., max_series}`` windows of the same
  length taken from different series: each window is divided by its mean absolute value,
  then they are added with Dirichlet(α) weights. With ``k = 1`` it is a plain window.

Everything draws from a ``numpy.random.Generator``, so a seed fixes the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Kernel = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x (n,), y (m,)) -> covariance (n, m)

# periods in points, the paper's: hourly data's day (24) and week (168) and their halves and
# quarters, daily data's week, month and year, weekly data's month, half-year and year,
# monthly data's quarter, half-year and year, quarterly data's year and decade, yearly data's decade
PERIODS = (4, 6, 7, 10, 12, 14, 24, 26, 30, 40, 48, 52, 60, 96, 168, 336, 365, 672, 730)
LINEAR_OFFSETS = (0.0, 1.0, 10.0)  # sigma_0 of k(x, y) = sigma_0² + x·y
LENGTH_SCALES = (0.1, 1.0, 10.0)  # RBF, on [0, 1]
MIXTURE_SCALES = (0.1, 1.0, 10.0)  # rational quadratic's alpha
NOISE_LEVELS = (0.1, 1.0)
MAX_KERNELS = 5
JITTER = 1e-6  # added to the covariance's diagonal so its Cholesky factor exists


def linear(sigma_0: float) -> Kernel:
    return lambda x, y: sigma_0**2 + np.outer(x, y)


def rbf(length_scale: float) -> Kernel:
    return lambda x, y: np.exp(-((x[:, None] - y[None, :]) ** 2) / (2 * length_scale**2))


def rational_quadratic(alpha: float, length_scale: float = 1.0) -> Kernel:
    return lambda x, y: (1 + (x[:, None] - y[None, :]) ** 2 / (2 * alpha * length_scale**2)) ** -alpha


def periodic(period: float, length_scale: float = 1.0) -> Kernel:
    """ExpSineSquared with ``period`` as a fraction of [0, 1]."""
    return lambda x, y: np.exp(-2 * np.sin(np.pi * np.abs(x[:, None] - y[None, :]) / period) ** 2 / length_scale**2)


def constant(value: float = 1.0) -> Kernel:
    return lambda x, y: np.full((len(x), len(y)), value)


def white_noise(level: float) -> Kernel:
    return lambda x, y: level * (x[:, None] == y[None, :])


def kernel_bank(length: int) -> list[tuple[str, Kernel]]:
    """The basis kernels for series of ``length`` points, each named (periods in points)."""
    bank = [(f"linear({s})", linear(s)) for s in LINEAR_OFFSETS]
    bank += [(f"rbf({s})", rbf(s)) for s in LENGTH_SCALES]
    bank += [(f"rational_quadratic({a})", rational_quadratic(a)) for a in MIXTURE_SCALES]
    step = 1 / (length - 1)  # the spacing of the points on [0, 1]
    bank += [(f"periodic({p})", periodic(p * step)) for p in PERIODS if p <= length / 2]  # two cycles at least
    bank += [("constant", constant()), *[(f"white_noise({n})", white_noise(n)) for n in NOISE_LEVELS]]
    return bank


def random_kernel(rng: np.random.Generator, length: int, max_kernels: int = MAX_KERNELS) -> tuple[str, Kernel]:
    """A random composition of 1 to ``max_kernels`` basis kernels joined by + or × (left to right)."""
    bank = kernel_bank(length)
    picks = rng.integers(len(bank), size=rng.integers(1, max_kernels + 1))
    name, kernel = bank[picks[0]]
    for i in picks[1:]:
        other_name, other = bank[i]
        if rng.random() < 0.5:
            name, kernel = f"({name} + {other_name})", _add(kernel, other)
        else:
            name, kernel = f"({name} × {other_name})", _multiply(kernel, other)
    return name, kernel


def _add(a: Kernel, b: Kernel) -> Kernel:
    return lambda x, y: a(x, y) + b(x, y)


def _multiply(a: Kernel, b: Kernel) -> Kernel:
    return lambda x, y: a(x, y) * b(x, y)


def sample_gp(rng: np.random.Generator, kernel: Kernel, length: int) -> np.ndarray:
    """One draw of GP(0, kernel) on ``length`` evenly spaced points of [0, 1]."""
    x = np.linspace(0.0, 1.0, length)
    covariance = kernel(x, x) + JITTER * np.eye(length)
    try:
        factor = np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:  # numerically not positive definite: the eigendecomposition still samples it
        values, vectors = np.linalg.eigh(covariance)
        factor = vectors * np.sqrt(np.clip(values, 0, None))
    return factor @ rng.standard_normal(length)


def kernel_synth(rng: np.random.Generator, length: int, max_kernels: int = MAX_KERNELS) -> np.ndarray:
    """One KernelSynth series of ``length`` points."""
    _, kernel = random_kernel(rng, length, max_kernels)
    return sample_gp(rng, kernel, length)


def ts_mixup(rng: np.random.Generator, pool: Sequence[np.ndarray], length: int, max_series: int = 3,
             alpha: float = 1.5) -> np.ndarray:  # fmt: skip
    """A convex mixture of 1 to ``max_series`` mean-scaled windows of ``length`` points from ``pool``.

    A series shorter than ``length`` gives all it has, left-padded with NaN (missing history);
    the mixture is NaN where any part is.
    """
    if not len(pool):
        raise ValueError("TSMixup needs at least one series in the pool")
    k = int(rng.integers(1, max_series + 1))
    weights = rng.dirichlet(np.full(k, alpha))
    mixed = np.zeros(length)
    for weight in weights:
        window = random_window(rng, pool[int(rng.integers(len(pool)))], length)
        mixed += weight * window / _mean_abs(window)
    return mixed


def random_window(rng: np.random.Generator, series: np.ndarray, length: int) -> np.ndarray:
    """``length`` consecutive points at a random place in ``series`` (left-padded with NaN if it is shorter)."""
    if len(series) <= length:
        return np.concatenate([np.full(length - len(series), np.nan), np.asarray(series, dtype=float)])
    start = int(rng.integers(len(series) - length + 1))
    return np.asarray(series[start : start + length], dtype=float)


def _mean_abs(window: np.ndarray) -> float:
    scale = np.nanmean(np.abs(window))
    return float(scale) if np.isfinite(scale) and scale > 0 else 1.0
