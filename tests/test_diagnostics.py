"""Tests for numpyro_wjs.diagnostics.modes: hand-computed label sequences and oracles."""

import warnings

import arviz as az
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from numpyro_wjs.diagnostics.modes import attach, classifier_scores, frechet_distance, mode_hopping
from numpyro_wjs.targets import GaussianMixture


def round_trips_reference(labels, a, b):
    """Literal state machine: a visit to ``a`` closes a trip if ``b`` was seen since the last ``a``."""
    trips, seen_a, seen_b = 0, False, False
    for label in labels:
        if label == a:
            trips += seen_a and seen_b
            seen_a, seen_b = True, False
        elif label == b and seen_a:
            seen_b = True
    return trips


def test_single_chain_by_hand():
    labels = np.array([0, 0, 1, 2, 2, 1, 0, 0, 2])
    ds = mode_hopping(labels, weights=[0.5, 0.25, 0.25])
    assert ds.sizes == {"chain": 1, "mode": 3}
    assert ds.switches.values.tolist() == [5]
    np.testing.assert_allclose(ds.switches_per_1000, [5 / 8 * 1000])
    np.testing.assert_allclose(ds.occupancy, [[4 / 9, 2 / 9, 3 / 9]])
    np.testing.assert_allclose(ds.occupancy_all, [4 / 9, 2 / 9, 3 / 9])
    # |4/9 - 1/2| + |2/9 - 1/4| + |3/9 - 1/4| = 1/18 + 1/36 + 1/12 = 1/6
    np.testing.assert_allclose(ds.tv_distance, [1 / 12])
    np.testing.assert_allclose(ds.tv_distance_all, 1 / 12)
    assert ds.steps_to_visit_all.values.tolist() == [4]
    # extremes 0 and 2: 0 0 2 2 0 0 2 -> 0 2 0 2: one cycle 0 -> 2 -> 0
    assert ds.round_trips.values.tolist() == [1]
    assert ds.modes_visited.values.tolist() == [3]
    assert ds.attrs["num_chains"] == 1 and ds.attrs["num_draws"] == [9]
    assert ds.attrs["num_modes"] == 3 and ds.attrs["weights"] == [0.5, 0.25, 0.25]
    assert ds.attrs["extremes"] == [0, 2]


def test_several_chains_by_hand():
    labels = np.array(
        [
            [2, 2, 0, 1, 0, 2, 0],  # starts at b: 2 0 2 0 -> one trip
            [0, 0, 2, 2, 0, 2, 0],  # bounces: 0 2 0 2 0 -> two trips, never visits 1
            [1, 1, 1, 1, 1, 1, 1],  # stays in one mode
        ]
    )
    ds = mode_hopping(labels)
    assert ds.switches.values.tolist() == [5, 4, 0]
    np.testing.assert_allclose(ds.switches_per_1000, np.array([5, 4, 0]) / 6 * 1000)
    np.testing.assert_allclose(
        ds.occupancy, [[3 / 7, 1 / 7, 3 / 7], [4 / 7, 0, 3 / 7], [0, 1, 0]]
    )
    np.testing.assert_allclose(ds.occupancy_all, [7 / 21, 8 / 21, 6 / 21])
    assert ds.steps_to_visit_all.values.tolist() == [4, -1, -1]
    assert ds.round_trips.values.tolist() == [1, 2, 0]
    assert ds.modes_visited.values.tolist() == [3, 2, 1]
    assert "tv_distance" not in ds and "tv_distance_all" not in ds and "weights" not in ds.attrs
    # extremes (1, 2): chain 0 reads 2 1 2 -> no cycle 1 -> 2 -> 1; chain 2 never sees 2
    assert mode_hopping(labels, extremes=(1, 2)).round_trips.values.tolist() == [0, 0, 0]
    # extremes (2, 0): chain 0 reads 2 0 2 0 -> one cycle 2 -> 0 -> 2; chain 1 0 2 0 2 0 -> one
    assert mode_hopping(labels, extremes=(2, 0)).round_trips.values.tolist() == [1, 1, 0]


def test_middle_modes_do_not_break_trips_and_num_modes_pads():
    labels = [0, 1, 2, 1, 0, 1, 0, 1, 3]  # extremes 0 and 3 with num_modes=4: 0 0 0 3 -> none
    ds = mode_hopping(np.array(labels), num_modes=4)
    assert ds.round_trips.values.tolist() == [0]
    assert ds.steps_to_visit_all.values.tolist() == [9]
    ds = mode_hopping(np.array(labels), num_modes=5)
    assert ds.sizes["mode"] == 5 and ds.steps_to_visit_all.values.tolist() == [-1]
    assert mode_hopping(np.array(labels), num_modes=4, extremes=(0, 2)).round_trips.item() == 1


def test_matches_reference_on_random_ragged_chains():
    rng = np.random.default_rng(0)
    K = 4
    chains = []
    for n in (2, 3, 50, 500, 1000):
        jumps = rng.random(n) < 0.2
        chains.append(np.cumsum(np.where(jumps, rng.integers(1, K, n), 0)) % K)
    ds = mode_hopping(chains, num_modes=K)
    for c, labels in enumerate(chains):
        assert ds.switches[c] == np.count_nonzero(np.diff(labels))
        assert ds.round_trips[c] == round_trips_reference(labels, 0, K - 1)
        firsts = [np.flatnonzero(labels == k)[:1] for k in range(K)]
        expected = max(f[0] for f in firsts) + 1 if all(f.size for f in firsts) else -1
        assert ds.steps_to_visit_all[c] == expected
        np.testing.assert_allclose(ds.occupancy[c], np.bincount(labels, minlength=K) / labels.size)
    pooled = np.bincount(np.concatenate(chains), minlength=K) / sum(c.size for c in chains)
    np.testing.assert_allclose(ds.occupancy_all, pooled)
    assert ds.attrs["num_draws"] == [2, 3, 50, 500, 1000]
    assert np.all(np.isnan(ds.ess_mode_indicator)) and "differ in length" in ds.ess_mode_indicator.attrs["note"]


def test_indicator_ess_is_arviz_bulk_and_nan_when_constant():
    rng = np.random.default_rng(1)
    labels = np.cumsum(rng.random((4, 400)) < 0.05, axis=1) % 2
    labels[:, :10] = 0
    ds = mode_hopping(labels, num_modes=3)  # mode 2 is never visited
    indicator = (labels[None] == np.arange(2)[:, None, None]).astype(float)
    bulk = az.ess(indicator, chain_axis=-2, draw_axis=-1, method="bulk")
    np.testing.assert_allclose(ds.ess_mode_indicator[:2], bulk, rtol=1e-10)
    assert np.isnan(ds.ess_mode_indicator[2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stuck = mode_hopping(np.zeros((2, 100), int), num_modes=2)
        short = mode_hopping(np.array([[0, 1, 0], [1, 1, 0]]))
    assert np.all(np.isnan(stuck.ess_mode_indicator)) and np.all(np.isnan(short.ess_mode_indicator))
    assert stuck.round_trips.values.tolist() == [0, 0] and stuck.switches.values.tolist() == [0, 0]


class StubMixture:
    """Labels points of R^1 by the nearest of three centres."""

    K = 3
    weights = np.array([0.2, 0.3, 0.5])
    centres = np.array([-5.0, 0.0, 5.0])

    def mode_of(self, x):
        return np.argmin(np.abs(x[..., :1] - self.centres), axis=-1)


def test_stub_labeller_gives_weights_num_modes_and_batches():
    labels = np.array([[0, 0, 2, 1, 1], [2, 2, 2, 0, 2]])
    draws = StubMixture.centres[labels][..., None] + 0.1
    ds = mode_hopping(draws, StubMixture(), batch_size=3)
    expected = mode_hopping(labels, weights=StubMixture.weights)
    xr.testing.assert_identical(ds, expected)
    assert ds.attrs["weights"] == [0.2, 0.3, 0.5]
    calls = []

    def classifier(images):
        calls.append(images.shape)
        return images.reshape(images.shape[0], -1).sum(1).astype(np.int32) % 3

    images = np.broadcast_to(labels[..., None, None, None], (2, 5, 4, 4, 1)).astype(np.float32)
    ds = mode_hopping(images, classifier, event_ndim=3, batch_size=4)
    assert calls == [(4, 4, 4, 1)] * 3  # 10 images in batches of 4, the last padded
    np.testing.assert_array_equal(ds.occupancy_all, [3 / 10, 2 / 10, 5 / 10])  # 16 k % 3 = k
    single = mode_hopping(images[0], classifier, event_ndim=3)
    assert single.sizes["chain"] == 1 and single.switches.item() == 2


def test_gaussian_mixture_labeller_on_datatree():
    target = GaussianMixture.ring(K=4, radius=4.0, scale=0.3, weights=[0.1, 0.2, 0.3, 0.4])
    rng = np.random.default_rng(2)
    labels = rng.choice(4, size=(4, 2500), p=[0.1, 0.2, 0.3, 0.4])
    means = np.asarray(target.means)
    draws = (means[labels] + 0.3 * rng.standard_normal(labels.shape + (2,))).astype(np.float32)
    tree = az.from_dict({"posterior": {"x": draws, "y": draws[..., 0]}})
    ds = mode_hopping(tree, target, var_name="x")
    # adjacent ring modes are 4 sqrt(2) = 18.9 std apart: every draw keeps its component
    xr.testing.assert_identical(ds, mode_hopping(labels, weights=np.asarray(target.weights, np.float64)))
    # iid labels: occupancy_all[k] has standard error sqrt(pi_k (1 - pi_k) / 10^4); tol = 5 SE
    se = np.sqrt(ds.attrs["weights"] * (1 - np.array(ds.attrs["weights"])) / labels.size)
    assert np.all(np.abs(ds.occupancy_all - ds.attrs["weights"]) < 5 * se)
    assert ds.sizes == {"chain": 4, "mode": 4}
    with pytest.raises(ValueError, match="var_name"):
        mode_hopping(tree, target)
    with pytest.raises(ValueError, match="var_name"):
        mode_hopping(tree, target, var_name="z")
    tree = az.from_dict({"posterior": {"k": labels}}, coords={"chain": [10, 11, 12, 13]})
    ds = mode_hopping(tree)
    assert ds.chain.values.tolist() == [10, 11, 12, 13]
    transposed = tree["posterior"]["k"].transpose("draw", "chain")
    xr.testing.assert_identical(mode_hopping(transposed), ds)
    xr.testing.assert_identical(mode_hopping(jnp.asarray(labels, jnp.int32)).drop_vars("chain"), ds.drop_vars("chain"))


def test_attach_round_trip():
    tree = az.from_dict({"posterior": {"k": np.array([[0, 1, 1, 0], [1, 0, 0, 1]])}})
    ds = mode_hopping(tree)
    out = attach(tree, ds)
    assert "mode_hopping" in out.children and "mode_hopping" not in tree.children
    xr.testing.assert_identical(out["mode_hopping"].to_dataset(), ds)
    xr.testing.assert_identical(out["posterior"].to_dataset(), tree["posterior"].to_dataset())
    assert "hops" in attach(tree, ds, group="hops").children
    with pytest.raises(ValueError, match="already exists"):
        attach(out, ds)
    with pytest.raises(TypeError):
        attach(ds, ds)


def test_draws_from_a_dict_and_a_run():
    labels = np.array([[0, 1, 1, 0], [1, 0, 0, 1]])
    ds = mode_hopping(labels)
    xr.testing.assert_identical(mode_hopping({"k": labels}), ds)

    class Run:
        data = az.from_dict({"posterior": {"k": labels}})

    xr.testing.assert_identical(mode_hopping(Run()), ds)


@pytest.mark.parametrize(
    "data, kwargs, error, match",
    [
        (np.array([0.0, 1.0]), {}, TypeError, "integers"),
        (np.array([True, False]), {}, TypeError, "integers"),
        (np.array([0, -1, 1]), {}, ValueError, ">= 0"),
        (np.array([0, 1, 3]), {"num_modes": 3}, ValueError, "out of range"),
        (np.zeros((2, 3, 1), int), {}, ValueError, "shape"),
        (np.zeros((2, 0), int), {}, ValueError, "at least one chain"),
        (np.array([[0, 1]]).T, {}, ValueError, "at least 2 draws"),
        ([np.array([0, 1]), np.array([], int)], {}, ValueError, "at least 2 draws"),
        ([], {}, ValueError, "one 1-D label array"),
        ([np.zeros((2, 2), int)], {}, ValueError, "one 1-D label array"),
        (np.array([0, 0, 0]), {}, ValueError, "num_modes >= 2"),
        (np.array([0, 1]), {"weights": [0.5, -0.1, 0.6]}, ValueError, "non-negative"),
        (np.array([0, 1]), {"weights": [0.5, np.nan]}, ValueError, "finite"),
        (np.array([0, 1]), {"weights": [[0.5, 0.5]]}, ValueError, "shape"),
        (np.array([0, 1]), {"weights": [1, 1, 1], "num_modes": 2}, ValueError, "length 3"),
        (np.array([0, 1]), {"extremes": (1, 1)}, ValueError, "distinct"),
        (np.array([0, 1]), {"extremes": (0, 2)}, ValueError, "distinct"),
        (xr.DataTree(), {}, ValueError, "posterior"),
        (xr.DataArray(np.zeros((2, 3), int), dims=("a", "b")), {}, ValueError, "dims"),
    ],
)
def test_bad_inputs_raise(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        mode_hopping(data, **kwargs)


def test_bad_labellers_and_weight_normalisation():
    draws = np.zeros((2, 3, 1))
    with pytest.raises(ValueError, match="shape"):
        mode_hopping(draws, lambda x: np.zeros((x.shape[0], 2), int), num_modes=2)
    with pytest.raises(TypeError, match="callable"):
        mode_hopping(draws, object(), num_modes=2)
    with pytest.raises(ValueError, match="event_ndim"):
        mode_hopping(np.zeros((2, 3, 4, 4)), lambda x: np.zeros(x.shape[0], int), num_modes=2)
    with pytest.raises(ValueError, match="batch_size"):
        mode_hopping(draws, lambda x: np.zeros(x.shape[0], int), num_modes=2, batch_size=0)
    ds = mode_hopping(np.array([0, 1, 1, 2]), weights=[2, 1, 1])
    assert ds.attrs["weights"] == [0.5, 0.25, 0.25]
    np.testing.assert_allclose(ds.tv_distance_all, 0.25)  # |1/4-1/2| + |1/2-1/4| + 0 = 1/2


# --------------------------------------------------------------------------- Frechet distance
def exact_moments_sample(rng, n, mean, cov):
    """``n`` rows whose sample mean and (ddof=1) covariance equal ``mean`` and ``cov`` exactly."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mean


def frechet_2d(mean_a, cov_a, mean_b, cov_b):
    """Closed form in 2-D: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for 2x2 PSD M, with
    M = S_a^{1/2} S_b S_a^{1/2}, tr M = tr(S_a S_b), det M = det S_a det S_b."""
    cross = np.sqrt(np.trace(cov_a @ cov_b) + 2 * np.sqrt(np.linalg.det(cov_a) * np.linalg.det(cov_b)))
    return np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross


MEAN_A, COV_A = np.array([0.0, 1.0]), np.array([[2.0, 0.8], [0.8, 1.0]])
MEAN_B, COV_B = np.array([1.0, -0.5]), np.array([[0.5, -0.3], [-0.3, 1.5]])  # does not commute with COV_A


def test_frechet_exact_on_samples_with_given_moments():
    rng = np.random.default_rng(3)
    a = exact_moments_sample(rng, 50, MEAN_A, COV_A)
    b = exact_moments_sample(rng, 80, MEAN_B, COV_B)
    np.testing.assert_allclose(frechet_distance(a, b), frechet_2d(MEAN_A, COV_A, MEAN_B, COV_B), rtol=1e-10)
    # commuting covariances Q diag(l_a) Q^T, Q diag(l_b) Q^T: FD = |dm|^2 + sum (sqrt l_a - sqrt l_b)^2
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    l_a, l_b = np.array([0.1, 0.5, 1.0, 2.0, 4.0]), np.array([3.0, 0.2, 1.0, 0.7, 0.05])
    m_a, m_b = rng.standard_normal(5), rng.standard_normal(5)
    a = exact_moments_sample(rng, 40, m_a, (q * l_a) @ q.T)
    b = exact_moments_sample(rng, 30, m_b, (q * l_b) @ q.T)
    expected = np.sum((m_a - m_b) ** 2) + np.sum((np.sqrt(l_a) - np.sqrt(l_b)) ** 2)
    np.testing.assert_allclose(frechet_distance(a, b), expected, rtol=1e-10)


def test_frechet_of_large_gaussian_samples_matches_closed_form():
    rng = np.random.default_rng(4)
    R, n = 40, 5000
    estimates = np.array([
        frechet_distance(
            rng.multivariate_normal(MEAN_A, COV_A, size=n), rng.multivariate_normal(MEAN_B, COV_B, size=n)
        )
        for _ in range(R)
    ])
    exact = frechet_2d(MEAN_A, COV_A, MEAN_B, COV_B)
    # tol = 5 standard errors of the mean of R independent replicates (SE about 0.012);
    # the estimator's O(d / n) bias (about 2e-3 at equal distributions) is far below it
    se = estimates.std(ddof=1) / np.sqrt(R)
    assert abs(estimates.mean() - exact) <= 5 * se, (estimates.mean(), exact, se)


def test_frechet_identity_symmetry_and_translation():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6))
    a[:, 0] = 0.0  # a dead feature (e.g. a ReLU unit that never fires): singular covariance
    b = rng.standard_normal((200, 6)) * 2.0 + 1.0
    scale = np.trace(np.cov(a, rowvar=False))
    assert 0.0 <= frechet_distance(a, a) <= 1e-6 * scale
    np.testing.assert_allclose(frechet_distance(a, b), frechet_distance(b, a), rtol=1e-9)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 0.0])
    np.testing.assert_allclose(frechet_distance(a + shift, a), np.sum(shift**2), rtol=1e-6)
    np.testing.assert_allclose(frechet_distance(a[:, :1] + 2.0, a[:, :1]), 4.0, rtol=1e-12)
    assert frechet_distance(jnp.asarray(a, jnp.float32), a) <= 1e-5 * scale
    np.testing.assert_allclose(frechet_distance(a.astype(int), b.astype(int)), frechet_distance(
        a.astype(int).astype(float), b.astype(int).astype(float)), rtol=1e-12)


@pytest.mark.parametrize(
    "a, b, error, match",
    [
        (np.zeros(5), np.zeros((5, 1)), ValueError, r"shape \(n, d\)"),
        (np.zeros((5, 2, 2)), np.zeros((5, 4)), ValueError, "reshape"),
        (np.zeros((5, 2)), np.zeros((5, 3)), ValueError, "same number of columns"),
        (np.zeros((1, 2)), np.zeros((5, 2)), ValueError, "at least 2 rows"),
        (np.zeros((5, 2)), np.zeros((5, 0)), ValueError, "at least 2 rows"),
        (np.array([[0.0, 1.0], [np.nan, 2.0]]), np.zeros((5, 2)), ValueError, "non-finite"),
        (np.zeros((5, 2)), np.full((5, 2), np.inf), ValueError, "non-finite"),
        (np.array([["a", "b"], ["c", "d"]]), np.zeros((2, 2)), TypeError, "numeric"),
        (np.zeros((3, 2), dtype=complex), np.zeros((3, 2)), TypeError, "numeric"),
    ],
)
def test_frechet_bad_inputs_raise(a, b, error, match):
    with pytest.raises(error, match=match):
        frechet_distance(a, b)


# ---------------------------------------------------------------------------
# classifier_scores: a stub classifier whose answers are written into the draws


class _StubClassifier:
    """Draws (..., 3): column 0 the label, column 1 its probability, column 2 a feature.

    The rest of the probability is spread evenly over the other classes.
    """

    K = 4

    def probs(self, x):
        x = np.asarray(x)
        label, p = x[:, 0].astype(int), x[:, 1]
        out = np.repeat(((1 - p) / (self.K - 1))[:, None], self.K, axis=1)
        out[np.arange(len(x)), label] = p
        return out

    def features(self, x):
        x = np.asarray(x)
        return np.stack([x[:, 2], x[:, 2] ** 2], axis=1)


def _draws(labels, confidence, features):
    return np.stack([np.asarray(labels, float), np.asarray(confidence, float),
                     np.asarray(features, float)], axis=-1)


def test_classifier_scores_by_hand():
    # chain 0: labels 0 1 1 2 0 0 with draw 2 unconfident -> confident sequence 0 1 2 0 0:
    # 3 changes; chain 1: 3 3 3 1 1 1, draw 0 unconfident -> 3 3 1 1 1: 1 change.
    labels = [[0, 1, 1, 2, 0, 0], [3, 3, 3, 1, 1, 1]]
    conf = [[0.95, 0.9, 0.5, 0.99, 0.92, 0.91], [0.3, 0.97, 0.97, 0.97, 0.97, 0.97]]
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 6))
    draws = _draws(labels, conf, feats)
    heldout = _draws(np.zeros(50), np.ones(50), rng.normal(size=50))
    reference = _draws(np.zeros(40), np.ones(40), rng.normal(size=40))
    scores = classifier_scores(draws, _StubClassifier(), heldout, reference, steps_per_draw=5,
                               evaluations_per_draw=20, thin_steps=10, seed=3)
    assert scores["confident"] == pytest.approx(10 / 12)
    # 4 changes over 2 chains x 6 draws x 5 walk steps = 60 steps; 240 network calls
    assert scores["changes_per_1000_steps"] == pytest.approx(1000 * 4 / 60)
    assert scores["changes_per_1000_evaluations"] == pytest.approx(1000 * 4 / 240)
    # class shares of the ten confident draws, against uniform over K = 4
    confident_labels = [0, 1, 2, 0, 0, 3, 3, 1, 1, 1]
    shares = np.bincount(confident_labels, minlength=4) / 10
    assert scores["class_tv"] == pytest.approx(0.5 * np.abs(shares - 0.25).sum())
    # one draw every 10 walk steps = every 2nd draw: draws 0, 2, 4 of each chain
    thinned = draws[:, ::2].reshape(-1, 3)
    stub = _StubClassifier()
    assert scores["frechet_samples"] == 6
    assert scores["frechet"] == pytest.approx(frechet_distance(stub.features(thinned), stub.features(heldout)))
    rows = np.random.default_rng(3).choice(40, 6, replace=False)
    floor = frechet_distance(stub.features(reference[rows]), stub.features(heldout))
    assert scores["frechet_floor"] == pytest.approx(floor)
    assert scores["frechet_ratio"] == pytest.approx(scores["frechet"] / floor)


def test_classifier_scores_of_data_sit_at_the_floor_and_refuse_nan():
    # Draws that are themselves data: the ratio to the floor is 1 up to sampling error
    # (200 rows of 2 features: the Frechet estimates have a relative spread of about 30%).
    rng = np.random.default_rng(1)
    data = lambda n: _draws(rng.integers(0, 4, n), np.ones(n), rng.normal(size=n))  # noqa: E731
    draws = data(400).reshape(4, 100, 3)
    scores = classifier_scores(draws, _StubClassifier(), data(2000), data(2000), thin_steps=2)
    assert scores["frechet_samples"] == 200
    assert 0.2 < scores["frechet_ratio"] < 5
    shifted = draws + np.array([0, 0, 1.0])
    assert classifier_scores(shifted, _StubClassifier(), data(2000), data(2000), thin_steps=2)["frechet_ratio"] > 20
    bad = draws.copy()
    bad[0, 3, 2] = np.nan
    with pytest.raises(ValueError, match="diverging"):
        classifier_scores(bad, _StubClassifier(), data(10), data(10))
    with pytest.raises(ValueError, match="threshold"):
        classifier_scores(draws, _StubClassifier(), data(10), data(10), threshold=0)


# --------------------------------------------------------------------------- stray chains
def test_stray_chains_flags_an_excursion_and_nothing_else():
    from numpyro_wjs.diagnostics.chains import stray_chains, warn_stray_chains

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 500, 3))
    s = rng.lognormal(size=(8, 500))
    assert stray_chains({"x": x, "s": s}) == {}
    x[5, 250:, 1] += 12.0  # chain 5 leaves for half its draws (its sd grows, its mean moves 6 sd)
    s[2] = np.nan
    assert stray_chains({"x": x, "s": s}) == {"x": [5], "s": [2]}
    assert stray_chains({"x": x[:2]}) == {}  # two chains cannot say which one strays
    with pytest.warns(RuntimeWarning, match=r"x: chains \[5\]"):
        warn_stray_chains({"x": x}, var_names=["x"])
