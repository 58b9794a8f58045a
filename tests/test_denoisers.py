"""Tests for numpyro_wjs.nn.denoisers: shapes, batching, EDM preconditioning, score.

Exact oracle: the output layer of every network starts at zero, so an untrained
network is ``xhat(y) = c_skip(s) y = sd^2 / (s^2 + sd^2) y``, the Bayes denoiser of
``N(0, sd^2 I)`` data, whose score is ``-y / (s^2 + sd^2)``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from numpyro_wjs.nn.denoisers import MLP, UNet, edm_preconditioning


def make(cls, *args, **kwargs):
    """Build a network in one jitted program (eager init compiles one program per shape)."""
    return nnx.jit(lambda: cls(*args, **kwargs, rngs=nnx.Rngs(0)))()


@nnx.jit
def apply(net, y, *s):
    return net(y, *s)


def random_net(cls, *args, scale=0.3, **kwargs):
    """A network with N(0, scale^2) parameters, built without compiling an initialiser."""
    abstract = nnx.eval_shape(lambda: cls(*args, **kwargs, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(0)
    leaves, treedef = jax.tree.flatten(state)
    values = [jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype) for x in leaves]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, values))


def test_edm_preconditioning_values():
    s, sd = 0.3, 0.5
    c_skip, c_out, c_in, c_noise = edm_preconditioning(jnp.float32(s), sd)
    np.testing.assert_allclose(c_skip, 0.25 / 0.34, rtol=1e-6)
    np.testing.assert_allclose(c_out, 0.15 / np.sqrt(0.34), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(0.34), rtol=1e-6)
    np.testing.assert_allclose(c_noise, np.log(0.3) / 4, rtol=1e-6)
    # Unit-variance target: Var[(x - c_skip y) / c_out] = 1 for x ~ N(0, sd^2), y = x + s eps.
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * s**2) / c_out**2
    np.testing.assert_allclose(target_var, 1.0, rtol=1e-5)


@pytest.mark.parametrize("noise_conditional", [False, True])
def test_mlp_shapes_and_batching(noise_conditional):
    kw = dict(noise_conditional=True) if noise_conditional else dict(sigma=0.5)
    net = random_net(MLP, 3, (16, 16), sigma_data=1.0, **kw)
    args = (0.7,) if noise_conditional else ()
    y = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 3)), jnp.float32)
    out = apply(net, y, *args)
    assert out.shape == (2, 4, 3) and out.dtype == jnp.float32
    single = apply(net, y[1, 2], *args)
    assert single.shape == (3,)
    np.testing.assert_allclose(single, out[1, 2], rtol=1e-5, atol=1e-6)
    # A closure over the module, as a sampler would use it inside jax.jit.
    closed = jax.jit(lambda v: net(v.reshape(8, 3), *args).reshape(2, 4, 3))(y)
    np.testing.assert_allclose(closed, out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "shape, channels, noise_conditional",
    [((28, 28, 1), (4, 8, 8), False), ((32, 32, 3), (4, 8), True)],
)
def test_unet_shapes_batching_and_score(shape, channels, noise_conditional):
    kw = dict(noise_conditional=True) if noise_conditional else dict(sigma=1.0)
    net = random_net(UNet, shape[-1], channels, 4, **kw)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, *shape)), jnp.float32)
    s = jnp.array([0.2, 1.5]) if noise_conditional else jnp.array([1.0, 1.0])
    args, single_args = ((s,), (s[1],)) if noise_conditional else ((), ())
    out = apply(net, x, *args)
    single = apply(net, x[1], *single_args)
    assert out.shape == (2, *shape) and single.shape == shape
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(single, out[1], rtol=1e-4, atol=1e-5)
    score = nnx.jit(lambda m, v, *t: m.score(v, *t))(net, x, *args)
    expected = (out - x) / s[:, None, None, None] ** 2
    np.testing.assert_allclose(score, expected, rtol=1e-4, atol=1e-4)


def test_noise_conditioning_changes_output():
    net = random_net(MLP, 2, (16,), noise_conditional=True, sigma_data=1.0)
    y = jnp.ones((3, 2))
    a = apply(net, y, jnp.full(3, 0.1))
    b = apply(net, y, jnp.full(3, 2.0))
    per_example = apply(net, y, jnp.array([0.1, 2.0, 0.1]))
    assert not np.allclose(a, b)
    np.testing.assert_allclose(per_example[0], a[0], rtol=1e-5)
    np.testing.assert_allclose(per_example[1], b[1], rtol=1e-5)


@pytest.mark.parametrize("noise_conditional", [False, True])
def test_score_formula(noise_conditional):
    s = 0.6
    kw = dict(noise_conditional=True) if noise_conditional else dict(sigma=s)
    args = (s,) if noise_conditional else ()
    net = random_net(MLP, 4, (8,), sigma_data=0.8, **kw)
    y = jnp.asarray(np.random.default_rng(2).normal(size=(5, 4)), jnp.float32)
    score = nnx.jit(lambda m, v, *t: m.score(v, *t))
    expected = (apply(net, y, *args) - y) / s**2
    np.testing.assert_allclose(score(net, y, *args), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score(net, y[0], *args), expected[0], rtol=1e-5, atol=1e-6)


def test_fresh_network_is_gaussian_bayes_denoiser():
    sd, s = 0.8, jnp.array([0.3, 0.6, 2.0])
    net = make(MLP, 4, (8,), noise_conditional=True, sigma_data=sd)
    y = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)), jnp.float32)
    score = nnx.jit(lambda m, v, t: m.score(v, t))
    var = (s**2 + sd**2)[:, None]
    np.testing.assert_allclose(apply(net, y, s), sd**2 / var * y, rtol=1e-6)
    np.testing.assert_allclose(score(net, y, s), -y / var, rtol=1e-5)


def test_float64_inputs():
    net = random_net(MLP, 2, (8,), sigma=0.5)
    with jax.enable_x64(True):
        y = jnp.ones((3, 2), jnp.float64)
        out = apply(net, y)
        assert out.dtype == jnp.float64
        assert bool(jnp.all(jnp.isfinite(out)))


def test_call_errors():
    fixed = random_net(MLP, 2, (8,), sigma=0.5)
    cond = random_net(MLP, 2, (8,), noise_conditional=True)
    untrained = random_net(MLP, 2, (8,))
    y = jnp.ones((3, 2))
    with pytest.raises(TypeError, match="fixed-sigma"):
        fixed(y, 0.5)
    with pytest.raises(TypeError, match="noise-conditional"):
        cond(y)
    with pytest.raises(ValueError, match="no training noise level"):
        untrained(y)
    with pytest.raises(ValueError, match="positive"):
        cond(y, 0.0)
    with pytest.raises(ValueError, match="broadcast"):
        cond(y, jnp.ones(4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        fixed(jnp.ones((3, 5)))


def test_unet_bad_shapes():
    net = nnx.eval_shape(lambda: UNet(1, (8, 16, 32), 8, sigma=1.0, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(jnp.ones((30, 30, 1)))
    with pytest.raises(ValueError, match="channels"):
        net(jnp.ones((28, 28, 3)))
    with pytest.raises(ValueError, match="at least 3"):
        net(jnp.ones((28, 28)))


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_groups"):
        UNet(1, (12, 16), 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="channels"):
        UNet(1, (), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dim"):
        MLP(0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hidden"):
        MLP(2, (8, 0), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="sigma_data"):
        MLP(2, sigma_data=-1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="sigma"):
        MLP(2, sigma=float("nan"), rngs=nnx.Rngs(0))
