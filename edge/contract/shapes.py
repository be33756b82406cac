"""The sample shape: what one model input row is, without the batch axis.

    (F,)        a feature vector (tabular quality data): F features
    (C, L)      a window: C channels of L samples (the original case)
    (C, H, W)   an image: C channels of H rows of W columns (camera stills)

The manifest's `inputs[0].shape` minus its batch axis is the truth; the codec, the
normaliser, the drift statistics and the export all read it through these helpers. Axis 0
is always the "channel" axis: normalisation and drift statistics are per entry of axis 0,
over every other axis (for (F,) that is one value per feature).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_RANK = 3  # (C, H, W); a sample of higher rank is not a supported input

# The name of one entry along each axis, by rank: used in every error message.
AXIS_NAMES: dict[int, tuple[str, ...]] = {
    1: ("feature",),
    2: ("channel", "sample"),
    3: ("channel", "row", "column"),
}


def sample_shape_problem(shape: Sequence[object]) -> str | None:
    """Why `shape` is not a sample shape (1 to 3 positive integers), or None."""
    if not 1 <= len(shape) <= MAX_RANK:
        return (f"a sample has 1 to {MAX_RANK} axes ((F,), (C, L) or (C, H, W)), "
                f"got {len(shape)}: {list(shape)}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        return f"sample sizes must be positive integers, got {list(shape)}"
    return None


def plural(name: str, n: int) -> str:
    return name if n == 1 else f"{name}s"


def describe(shape: Sequence[int], start: int = 0) -> str:
    """'30 features', '6 channels of 100 samples', '1 channel of 8 rows of 8 columns'; the
    axes from `start` on with `start` ('8 rows of 8 columns' for start 1)."""
    names = AXIS_NAMES[len(shape)]
    return " of ".join(f"{n} {plural(names[i], n)}" for i, n in enumerate(shape)
                       if i >= start)


def where(rank: int, index: Sequence[int]) -> str:
    """'channel 2, sample 17' for index (2, 17) of a rank-2 sample."""
    names = AXIS_NAMES[rank]
    return ", ".join(f"{names[i]} {int(v)}" for i, v in enumerate(index))


def as_text(shape: Sequence[int]) -> str:
    """'6,100': the form of `--input-shape` and of the binary `shape` user property."""
    return ",".join(str(int(d)) for d in shape)


def per_channel(x: np.ndarray, rank: int) -> np.ndarray:
    """x (..., C, *rest) of samples of `rank` -> (..., C, M) with M = prod(rest) (1 for
    (F,)): a view when x is contiguous; statistics over the last axis are per channel."""
    lead = x.shape[: x.ndim - rank]
    return x.reshape(*lead, x.shape[x.ndim - rank], -1)
