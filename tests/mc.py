"""Monte Carlo tolerances for statistical tests.

Every comparison of a sampler's estimate with an exact value allows ``N_SE``
Monte Carlo standard errors, estimated by ArviZ from the draws themselves (so
autocorrelation is accounted for): a correct sampler fails such a check with
probability below 1e-6 per comparison, a wrong one fails once its bias exceeds a
few standard errors.
"""

import arviz as az
import numpy as np

N_SE = 5.0


def mcse(draws) -> float:
    """Monte Carlo standard error of the mean of ``draws`` with shape (chain, draw)."""
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim == 1:
        draws = draws[None]
    return float(az.mcse(draws, method="mean"))


def assert_mean_close(draws, expected, n_se=N_SE, what="mean"):
    """``|mean(draws) - expected| <= n_se * mcse``, for draws of shape (chain, draw)."""
    draws = np.asarray(draws, dtype=np.float64)
    est = draws.mean()
    se = mcse(draws)
    assert np.isfinite(est), f"{what}: estimate is not finite"
    assert abs(est - expected) <= n_se * se, (
        f"{what}: estimate {est:.5f} vs exact {expected:.5f}; "
        f"allowed {n_se} x MCSE = {n_se * se:.5f}"
    )


def assert_moments_close(draws, mean, cov, n_se=N_SE):
    """Check every mean and second moment ``E[(x_i - m_i)(x_j - m_j)]`` of draws (chain, draw, d)."""
    draws = np.asarray(draws, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    d = draws.shape[-1]
    for i in range(d):
        assert_mean_close(draws[..., i], mean[i], n_se, what=f"mean[{i}]")
    centred = draws - mean
    for i in range(d):
        for j in range(i, d):
            assert_mean_close(centred[..., i] * centred[..., j], cov[i, j], n_se, what=f"cov[{i},{j}]")


def assert_within(draws, expected, atol, what="mean", stat="mean", n_se=N_SE):
    """``|stat(draws) - expected| <= atol`` for a fixed tolerance ``atol`` (e.g. NumPyro's).

    ``stat`` is ``"mean"`` or ``"sd"`` (pooled over chains), draws of shape (chain, draw).
    The Monte Carlo error must also resolve the tolerance, ``n_se * MCSE <= atol``:
    otherwise a pass could be luck (too few or too autocorrelated draws).
    """
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim == 1:
        draws = draws[None]
    if stat == "mean":
        est = draws.mean()
    elif stat == "sd":
        est = draws.std()
    else:
        raise ValueError(f"stat must be 'mean' or 'sd', got {stat!r}")
    assert np.all(np.isfinite(draws)), f"{what}: draws are not all finite"
    se = float(az.mcse(draws, method=stat))
    assert abs(est - expected) <= atol, (
        f"{what}: estimate {est:.5g} vs exact {expected:.5g}; tolerance {atol:.3g} (MCSE {se:.3g})"
    )
    assert n_se * se <= atol, (
        f"{what}: Monte Carlo error does not resolve the tolerance: {n_se} x MCSE = {n_se * se:.3g} > {atol:.3g}"
    )
