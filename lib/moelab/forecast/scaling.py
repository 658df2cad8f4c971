"""The pretrained forecaster's tokenizer: standardize by the context, then quantize into fixed bins.

Chronos (Ansari et al. 2024, section 3.1) divides a window by the mean absolute value of its
context and quantizes the result into 4094 bins spanning [−15, 15]. That scaling keeps a
series' level, so a level-heavy series (CO₂ near 350 ppm with a seasonal swing of ±3) lands
in one or two bins and its season is lost. The pretrained forecaster standardizes instead,
as instance normalization does (Kim et al. 2022, "RevIN"; Moirai and TimesFM normalize the
same way): subtract the context's mean, divide by its standard deviation, then quantize into
``n_bins`` uniform bins whose centers span ``[−limit, limit]``. One model then reads every
series, whatever its level and unit, on one scale; values past the range clamp to the end
bins. A constant context has no spread; its scale falls back to a small fraction of its
level (or 1 for a context of zeros), so a later change still shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FLAT_SCALE = 1e-3  # a constant context's scale, as a fraction of its level


@dataclass(frozen=True)
class StandardQuantizer:
    n_bins: int = 1024
    limit: float = 10.0  # bin centers span [-limit, limit] standard deviations of the context

    def __post_init__(self) -> None:
        if not (isinstance(self.n_bins, (int, np.integer)) and self.n_bins >= 2):
            raise ValueError(f"n_bins must be an integer >= 2, got {self.n_bins!r}")
        if not self.limit > 0:
            raise ValueError(f"limit must be > 0, got {self.limit!r}")

    @property
    def centers(self) -> np.ndarray:
        return np.linspace(-self.limit, self.limit, self.n_bins)

    def statistics(self, context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(loc, scale) of each row of ``context`` (..., T), shaped (..., 1); NaN points are skipped."""
        context = np.asarray(context, dtype=float)
        loc = np.nanmean(context, axis=-1, keepdims=True)
        spread = np.nanstd(context, axis=-1, keepdims=True)
        flat = np.where(loc != 0, FLAT_SCALE * np.abs(loc), 1.0)
        return loc, np.where(spread > 0, np.maximum(spread, FLAT_SCALE * np.abs(loc)), flat)

    def encode(self, values: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Token ids (int64) of ``values`` standardized by ``loc`` and ``scale``: the nearest bin center."""
        z = (np.asarray(values, dtype=float) - loc) / scale
        step = 2 * self.limit / (self.n_bins - 1)
        return np.clip(np.rint((z + self.limit) / step), 0, self.n_bins - 1).astype(np.int64)

    def decode(self, ids: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return self.centers[np.asarray(ids)] * scale + loc

    def to_dict(self) -> dict:
        return asdict(self)
