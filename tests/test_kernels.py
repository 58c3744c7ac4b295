import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mnist_flax import kernels
from mnist_flax.core import models
from mnist_flax.kernels import cropped, patches, pooled, pooling
from tests.test_models import init


@pytest.mark.parametrize("shape", [(2, 26, 26, 3), (1, 11, 11, 2), (3, 5, 4, 1)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_2x2_matches_flax_max_pool_in_values_and_gradients(shape, ties):
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  if ties:  # ReLU'd and rounded: windows of zeros and of equal positive values.
    x = jnp.maximum(jnp.round(2 * x) / 2, 0.0)
  flax_pool = lambda x: nn.max_pool(x, (2, 2), (2, 2))  # noqa: E731
  np.testing.assert_array_equal(pooling.max_pool_2x2(x), flax_pool(x))
  g = jax.random.normal(jax.random.PRNGKey(2), flax_pool(x).shape)
  grad = jax.jit(lambda x, g: jax.vjp(pooling.max_pool_2x2, x)[1](g)[0])(x, g)
  np.testing.assert_array_equal(grad, jax.vjp(flax_pool, x)[1](g)[0])


def test_conv_has_the_parameters_of_flax_conv():
  x = jnp.zeros((1, 9, 8, 3))
  ours = jax.jit(patches.Conv(5, 4, "SAME").init)(jax.random.PRNGKey(2), x)
  reference = jax.jit(nn.Conv(5, (4, 4), padding="SAME").init)(jax.random.PRNGKey(2), x)
  jax.tree.map(np.testing.assert_array_equal, ours, reference)


@pytest.mark.parametrize("padding,kernel_size,channels", [("VALID", 3, 4), ("SAME", 4, 3), ("VALID", 5, 1)])
def test_patch_conv_matches_flax_conv_in_values_and_gradients(padding, kernel_size, channels):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 8, channels)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, channels, 5)), jnp.float32)
  params = {"params": {"kernel": kernel, "bias": jnp.asarray(rng.normal(size=5), jnp.float32)}}
  ours = patches.Conv(5, kernel_size, padding)
  flax_conv = nn.Conv(5, (kernel_size, kernel_size), padding=padding)

  def value_and_grads(module):
    loss = lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))  # noqa: E731
    return jax.jit(lambda p, x: (module.apply(p, x), jax.grad(loss, argnums=(0, 1))(p, x)))(params, x)

  expected = value_and_grads(flax_conv)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), value_and_grads(ours), expected)


def test_patches_are_ordered_as_a_flattened_kernel():
  x = jnp.arange(2 * 4 * 5 * 3, dtype=jnp.float32).reshape(2, 4, 5, 3)
  p = patches.patches(x, 3)
  assert p.shape == (2, 2, 3, 27)
  np.testing.assert_array_equal(p[1, 1, 2].reshape(3, 3, 3), x[1, 1:4, 2:5, :])


@pytest.mark.parametrize("impl", kernels.IMPLS)
def test_the_cnn_is_the_same_function_with_its_gradients(config, impl):
  model, other = models.create_model(config.model), kernels.cnn(config.model, impl)
  params = init(model)
  images = jax.random.uniform(jax.random.PRNGKey(4), (3, 28, 28, 1))

  def value_and_grad(m):
    loss = lambda p: jnp.sum(jnp.sin(m.apply({"params": p}, images, train=False)))  # noqa: E731
    return jax.jit(jax.value_and_grad(loss))(params)

  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), value_and_grad(other), value_and_grad(model)
  )


@pytest.mark.parametrize("impl", ["pooled", "patches", "xla"])
@pytest.mark.parametrize("features,kernel_size,convs_per_block", [((8, 16), 3, 1), ((8, 16), 4, 2), ((4, 8, 8), 2, 1)])
def test_the_cropped_blocks_compute_the_flax_layers_network(config, features, kernel_size, convs_per_block, impl):
  # Blocks' inputs are cropped to what their pool, or the last pool, uses: logits and gradients must not change.
  config.model.update(features=features, kernel_size=kernel_size, convs_per_block=convs_per_block)
  config.model.dense_features = (16,)
  model = kernels.cnn(config.model, impl)  # "pooled": the first block pooled in its conv, where it can be.
  reference = models.create_model(config.model)  # Flax's own layers, nothing cropped.
  images = jax.random.uniform(jax.random.PRNGKey(5), (3, 28, 28, 1))

  @jax.jit  # One compilation instead of one per operation.
  def both(images):
    params = init(model)
    outputs = []
    for apply in (
      lambda p: model.apply({"params": p}, images, train=False),
      lambda p: reference.apply({"params": p}, images, train=False),
    ):
      outputs.append((apply(params), jax.grad(lambda p: jnp.sum(jnp.sin(apply(p))))(params)))  # noqa: B023
    return outputs

  (ours, our_grads), (expected, expected_grads) = both(images)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), our_grads, expected_grads)


@pytest.mark.parametrize(
  "side,blocks,reach,expected",
  [(28, 2, 2, [26, 12]), (28, 1, 2, [28]), (28, 2, 6, [26, 10]), (28, 3, 1, [23, 11, 5]), (13, 1, 2, [12])],
)
def test_used_input_sides_keep_what_reaches_the_last_pool(side, blocks, reach, expected):
  assert cropped.used_input_sides(side, blocks, reach) == expected


def test_pool_windows_are_the_inputs_of_each_pool_window():
  x = jnp.arange(2 * 9 * 8 * 2, dtype=jnp.float32).reshape(2, 9, 8, 2)
  windows = pooled.pool_windows(x, 3)  # Conv outputs 7x6: pooled 3x3, the odd last row dropped.
  assert windows.shape == (2, 3, 3, 32)
  np.testing.assert_array_equal(windows[1, 2, 1].reshape(4, 4, 2), x[1, 4:8, 2:6, :])


@pytest.mark.parametrize(
  "shape,kernel_size", [((2, 28, 28, 1), 3), ((3, 9, 8, 3), 2), ((1, 12, 12, 4), 3), ((2, 13, 12, 1), 5)]
)
@pytest.mark.parametrize("ties", [False, True])
def test_conv_max_pool_matches_the_pooled_convolution_in_values_and_gradients(shape, kernel_size, ties):
  rng = np.random.default_rng(1)
  x = rng.integers(-2, 3, size=shape) if ties else rng.normal(size=shape)  # Small integers: exact sums, many ties.
  kernel = (
    rng.integers(-1, 2, size=(kernel_size, kernel_size, shape[-1], 5))
    if ties
    else rng.normal(size=(kernel_size, kernel_size, shape[-1], 5))
  )
  x, kernel = jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32)

  def value_and_grads(f):
    # With ties, integer output gradients keep the input and kernel gradients' sums exact too.
    g = lambda y: jnp.round(3 * jnp.cos(jnp.arange(y.size).reshape(y.shape))) if ties else jnp.sin(y)  # noqa: E731
    loss = lambda x, k: jnp.sum(f(x, k) * jax.lax.stop_gradient(g(f(x, k))))  # noqa: E731
    return jax.jit(lambda x, k: (f(x, k), jax.grad(loss, argnums=(0, 1))(x, k)))(x, kernel)

  ours = value_and_grads(pooled.conv_max_pool)
  expected = value_and_grads(lambda x, k: pooling.max_pool_2x2(pooled.xla_conv(x, k)))
  if ties:  # Exact arithmetic: the same maxima, each window's gradient to the same (first) one.
    jax.tree.map(np.testing.assert_array_equal, ours, expected)
  else:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), ours, expected)


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_a_pooled_conv_is_the_pool_of_the_conv_with_the_same_parameters(padding):
  x = jax.random.normal(jax.random.PRNGKey(6), (2, 11, 10, 1))
  params = jax.jit(patches.Conv(4, 3, padding).init)(jax.random.PRNGKey(7), x)
  pooled_conv = patches.Conv(4, 3, padding, pool=True)
  assert jax.tree.map(jnp.shape, pooled_conv.init(jax.random.PRNGKey(7), x)) == jax.tree.map(jnp.shape, params)
  ours, expected = jax.jit(
    lambda p, x: (pooled_conv.apply(p, x), pooling.max_pool_2x2(patches.Conv(4, 3, padding).apply(p, x)))
  )(params, x)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_only_the_single_channel_block_of_pooled_convolutions_pools_in_the_conv(seed_config):
  def conv_output_shapes(conv_impl, **changes):
    model = kernels.cnn(ml_collections.ConfigDict({**seed_config.model, **changes}), conv_impl)
    images = jnp.zeros((1, 28, 28, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False))
    _, state = jax.eval_shape(
      lambda v: model.apply(v, images, train=False, capture_intermediates=True, mutable=["intermediates"]), variables
    )
    return {name: out["__call__"][0].shape for name, out in state["intermediates"].items() if name.startswith("Conv")}

  # Pooled, the image is cropped to the 26x26 that the second block's 12x12 input needs.
  assert conv_output_shapes("pooled") == {"Conv_0": (1, 12, 12, 32), "Conv_1": (1, 10, 10, 64)}
  assert conv_output_shapes("xla") == {"Conv_0": (1, 26, 26, 32), "Conv_1": (1, 10, 10, 64)}
  for impl in ("patches", "flax"):
    assert conv_output_shapes(impl)["Conv_0"] == (1, 26, 26, 32)
  assert conv_output_shapes("pooled", batch_norm=True)["Conv_0"] == (1, 26, 26, 32)
  assert conv_output_shapes("pooled", convs_per_block=2)["Conv_0"] == (1, 26, 26, 32)
