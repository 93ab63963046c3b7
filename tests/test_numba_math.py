"""The compiled loops' exp (backends/numba_math.py) against NumPy's in extended precision, over the
whole float range: at most 2 ulp where the result is normal, the subnormals to within one of their
steps, and overflow, underflow, NaN and the infinities as NumPy has them."""
import numpy as np
import pytest
from numba import njit

from rgraph.backends.numba_math import exp_for


@pytest.mark.parametrize("dtype, lo, hi", [(np.float32, -110.0, 95.0), (np.float64, -760.0, 720.0)])
def test_vectorised_exp_matches_numpy(dtype, lo, hi):
    exp = exp_for(dtype)

    @njit(error_model="numpy")
    def run(x, out):
        for i in range(x.size):
            out[i] = exp(x[i])
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(lo, hi, 400_001), rng.standard_normal(100_000) * 3, rng.uniform(-1e-3, 1e-3, 1000),
                        [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(dtype)
    got = np.empty_like(x)
    run(x, got)
    with np.errstate(over="ignore", under="ignore"):
        want = np.exp(x.astype(np.longdouble))
        numpy_says = np.exp(x)
    info = np.finfo(dtype)
    normal = np.isfinite(want) & (want >= info.tiny) & (want <= info.max)
    ulps = np.abs(got[normal] - want[normal]) / (want[normal] * info.eps)
    assert ulps.max() <= 2.0, ulps.max()
    subnormal = (want < info.tiny) & (want > 0)
    assert np.all(np.abs(got[subnormal] - want[subnormal]) <= info.smallest_subnormal)
    assert np.array_equal(np.isinf(got), np.isinf(numpy_says)) and np.array_equal(np.isnan(got), np.isnan(x))
    assert got[-5] == 1.0 and got[-4] == 1.0 and got[-2] == 0.0
