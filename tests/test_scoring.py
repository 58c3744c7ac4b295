import jax
import numpy as np
import pytest

from mnist_flax import create_train_state, eval_step, kernels
from mnist_flax.core import scoring
from mnist_flax.core.train_state import create_ensemble_state
from mnist_flax.run import parallel


def test_batched_with_mask_pads_the_remainder():
  split = {"image": np.ones((10, 28, 28, 1), np.uint8), "label": np.arange(10, dtype=np.int32)}
  images, labels, mask = scoring.batched_with_mask(split, 4)
  assert images.shape == (3, 4, 28, 28, 1) and labels.shape == (3, 4)
  assert mask.sum() == 10 and not mask[2, 2:].any()
  np.testing.assert_array_equal(labels.reshape(-1)[:10], np.arange(10))


def test_confusion_matrix_and_per_class_accuracy():
  labels = np.array([0, 0, 1, 1, 1, 2])
  predictions = np.array([0, 1, 1, 1, 2, 2])
  confusion = scoring.confusion_matrix(labels, predictions, num_classes=4)
  expected = np.zeros((4, 4), int)
  expected[0, 0] = expected[0, 1] = expected[2, 2] = 1
  expected[1, 1], expected[1, 2] = 2, 1
  np.testing.assert_array_equal(confusion, expected)
  acc = scoring.per_class_accuracy(confusion)
  np.testing.assert_allclose(acc[:3], [0.5, 2 / 3, 1.0])
  assert np.isnan(acc[3])
  with pytest.raises(ValueError, match="labels must be in"):
    scoring.confusion_matrix(np.array([0, 10]), np.array([0, 1]))
  with pytest.raises(ValueError, match="inconsistent lengths"):
    scoring.confusion_matrix(labels[:-1], predictions)


@pytest.fixture
def small_state(config):
  config.model.features = (4,)
  config.model.dense_features = (8,)
  return create_train_state(config, jax.random.PRNGKey(0))


def test_evaluator_agrees_with_eval_step_and_counts_every_image_once(small_state):
  rng = np.random.default_rng(0)
  split = {
    "image": rng.integers(0, 256, (50, 28, 28, 1), dtype=np.uint8),
    "label": rng.integers(0, 10, 50).astype(np.int32),
  }
  mesh = parallel.create_mesh()
  result = scoring.Evaluator(split, 16, mesh)(small_state)  # 4 batches, the last one padded.
  direct = eval_step(small_state, {"image": split["image"] / np.float32(255), "label": split["label"]})
  assert result["count"] == 50
  assert result["loss"] == pytest.approx(float(direct["loss"]), rel=1e-5)
  assert result["accuracy"] == pytest.approx(float(direct["accuracy"]))
  probabilities = result["probabilities"]
  assert probabilities.shape == (50, 10)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  assert result["accuracy"] == pytest.approx(np.mean(probabilities.argmax(axis=1) == split["label"]))


def test_an_ensemble_is_the_mean_of_its_members_probabilities(config):
  config.model.features = (4,)
  config.model.dense_features = (8,)
  config.ensemble_size = 3
  state = create_ensemble_state(config, jax.random.PRNGKey(0))
  rng = np.random.default_rng(1)
  split = {
    "image": rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8),
    "label": rng.integers(0, 10, 30).astype(np.int32),
  }
  result = scoring.Evaluator(split, 16, parallel.create_mesh())(state)
  member_probabilities = []
  for i, member in enumerate(result["members"]):
    alone = jax.tree.map(lambda x, i=i: x[i], state)
    direct = eval_step(alone, {"image": split["image"] / np.float32(255), "label": split["label"]})
    assert member["accuracy"] == pytest.approx(float(direct["accuracy"]))
    assert member["loss"] == pytest.approx(float(direct["loss"]), rel=1e-5)
    logits = alone.apply_fn({"params": alone.params}, split["image"] / np.float32(255), train=False)
    member_probabilities.append(jax.nn.softmax(logits))
  mean = np.mean(member_probabilities, axis=0)
  np.testing.assert_allclose(result["probabilities"], mean, rtol=1e-5, atol=1e-6)
  assert result["accuracy"] == pytest.approx(np.mean(mean.argmax(axis=1) == split["label"]))
  assert result["loss"] == pytest.approx(-np.mean(np.log(mean[np.arange(30), split["label"]])), rel=1e-5)


def test_an_apply_fn_replaces_the_states_own(config):
  config.model.features, config.model.dense_features = (4, 8), (8,)
  state = create_train_state(config, jax.random.PRNGKey(0), model=kernels.cnn(config.model, "patches"))
  rng = np.random.default_rng(2)
  split = {
    "image": rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8),
    "label": rng.integers(0, 10, 30).astype(np.int32),
  }
  mesh = parallel.create_mesh()
  calls = []

  def xla_apply(variables, images, train):
    calls.append(images.shape)
    return kernels.cnn(config.model, "xla").apply(variables, images, train=train)

  own = scoring.Evaluator(split, 16, mesh)(state)
  other = scoring.Evaluator(split, 16, mesh, xla_apply)(state)
  assert calls  # Traced with the given function, not the state's.
  np.testing.assert_allclose(other["probabilities"], own["probabilities"], rtol=1e-4, atol=1e-6)
  assert other["loss"] == pytest.approx(own["loss"], rel=1e-5)
