"""Central-difference gradients for the tests (float64)."""
import numpy as np


def numerical_gradient(f, x, h=1e-5, indices=None):
    """d f / d x by central differences at the given flat indices (all by default).

    `x` is changed in place and restored. Returns an array shaped like x with
    NaN where no difference was taken.
    """
    grad = np.full(x.shape, np.nan)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size) if indices is None else indices:
        old = flat[i]
        flat[i] = old + h
        plus = f()
        flat[i] = old - h
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * h)
    return grad


def relative_error(analytic, numeric):
    """max |a - n| / max(|a| + |n|) over the entries where `numeric` was computed."""
    taken = ~np.isnan(numeric)
    a, n = analytic[taken], numeric[taken]
    return float(np.max(np.abs(a - n)) / max(np.max(np.abs(a) + np.abs(n)), 1e-12))


def sample_indices(rng, size, count):
    return rng.choice(size, size=min(size, count), replace=False)
