"""Dataset statistics: a_hat, top-k clips and per-class maxima against brute force;
streaming equals one batch; resume after an interruption; a_hat in the objective."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stviz_jax import config as config_lib
from stviz_jax import a_hat, gallery, models, optimize, stats
from stviz_jax.data import clips, synthetic
from stviz_jax.models.base import LayerGeometry

N, K, TOP = 29, 4, 5


def _apply(variables, inputs):
  """A random linear 'network': a 3-D tap, a 2-D tap, a vector tap and logits."""
  x = inputs["rgb"]                                         # (N, 2, 4, 4, 3)
  a = jnp.einsum("nthwc,cu->nthwu", x, variables["wa"])     # (N, 2, 4, 4, 5)
  b = jnp.einsum("nhwc,cu->nhwu", x[:, 0], variables["wb"])  # (N, 4, 4, 6)
  v = jnp.tanh(a).mean(axis=(1, 2, 3)) @ variables["wv"]    # (N, 7)
  return v @ variables["wl"], {"a": a, "b": b, "v": v}


@pytest.fixture(scope="module")
def model():
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  variables = {"wa": jax.random.normal(keys[0], (3, 5)), "wb": jax.random.normal(keys[1], (3, 6)),
               "wv": jax.random.normal(keys[2], (5, 7)), "wl": jax.random.normal(keys[3], (7, K))}
  geometry = {l: LayerGeometry((1, 3, 3), (1, 1, 1), ()) for l in ("a", "b", "v", "logits")}
  return models.wrap(_apply, variables, {"rgb": (2, 4, 4, 3)}, name="linear",
                     geometry=geometry)


@pytest.fixture(scope="module")
def dataset():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, K - 1, N)  # class K - 1 never occurs: its maxima are NaN.
  return clips.ArrayClips({"rgb": rng.normal(size=(N, 2, 4, 4, 3))}, labels,
                          [f"class{k}" for k in range(K)])


LAYERS = ("a", "b", "v", "logits")


def _brute_force(model, dataset, layer):
  """Every statistic from all activations at once, with plain NumPy."""
  inputs, labels = dataset.batch(np.arange(len(dataset)))
  feats = np.asarray(model.activations(inputs, [layer])[layer], np.float64)
  flat = feats.reshape(len(dataset), -1, feats.shape[-1])
  clip_max = flat.max(1)                                     # (N, U)
  order = np.argsort(-clip_max, axis=0, kind="stable")[:TOP].T  # (U, TOP)
  spatial = feats.shape[1:-1] or (1,)
  where = np.stack(np.unravel_index(flat.argmax(1), spatial), -1)  # (N, U, d)
  per_class = np.full((feats.shape[-1], K), np.nan)
  for k in np.unique(labels):
    per_class[:, k] = clip_max[labels == k].max(0)
  units = np.arange(feats.shape[-1])[:, None]
  return {"a_hat": feats.reshape(-1, feats.shape[-1]).max(0), "top_clips": order,
          "top_scores": clip_max[order, units], "top_labels": labels[order],
          "where": where[order, units], "per_class_max": per_class}


@pytest.fixture(scope="module")
def streamed(model, dataset):
  return stats.compute(model, dataset, LAYERS, batch_size=6, top_k=TOP)  # 5 batches, last padded.


@pytest.mark.parametrize("layer", LAYERS)
def test_statistics_equal_brute_force(model, dataset, streamed, layer):
  ref = _brute_force(model, dataset, layer)
  got = streamed.layers[layer]
  np.testing.assert_allclose(got["a_hat"], ref["a_hat"], rtol=1e-5)
  np.testing.assert_array_equal(got["top_clips"], ref["top_clips"])
  np.testing.assert_allclose(got["top_scores"], ref["top_scores"], rtol=1e-5)
  np.testing.assert_array_equal(got["top_labels"], ref["top_labels"])
  np.testing.assert_allclose(got["per_class_max"], ref["per_class_max"], rtol=1e-5)
  assert np.isnan(got["per_class_max"][:, K - 1]).all()
  d = ref["where"].shape[-1]
  where = np.stack([got["top_t"], got["top_y"], got["top_x"]], -1)[..., 3 - d:]
  if layer in ("a", "b"):
    np.testing.assert_array_equal(where, ref["where"])
  # a_hat is the best top clip's score, and the maximum over the classes.
  np.testing.assert_allclose(got["a_hat"], got["top_scores"][:, 0])
  np.testing.assert_allclose(got["a_hat"], np.nanmax(got["per_class_max"], 1))


def test_streamed_equals_one_big_batch(model, dataset, streamed):
  whole = stats.compute(model, dataset, LAYERS, batch_size=N, top_k=TOP)
  for layer in LAYERS:
    for k, v in whole.layers[layer].items():
      # Indices exactly; values to float rounding (XLA's sums depend on the batch shape).
      check = np.testing.assert_array_equal if v.dtype.kind == "i" else (
          lambda a, b, **kw: np.testing.assert_allclose(a, b, rtol=1e-6, **kw))
      check(streamed.layers[layer][k], v, err_msg=f"{layer}/{k}")


class _Interrupted(Exception):
  pass


class _Flaky:
  """The dataset, raising at batch `fail_at` (a kill mid-pass); counts reads."""

  def __init__(self, dataset, fail_at=None):
    self.dataset, self.fail_at, self.reads = dataset, fail_at, []
    self.class_names = dataset.class_names

  def __len__(self):
    return len(self.dataset)

  def fingerprint(self):
    return self.dataset.fingerprint()

  def batch(self, indices):
    self.reads.append(int(indices[0]))
    if self.fail_at is not None and int(indices[0]) >= self.fail_at * 6:
      raise _Interrupted()
    return self.dataset.batch(indices)


def test_resume_after_interruption_gives_the_same_statistics(model, dataset, streamed,
                                                              tmp_path):
  path = str(tmp_path / "state.npz")
  with pytest.raises(_Interrupted):
    stats.compute(model, _Flaky(dataset, fail_at=3), LAYERS, batch_size=6, top_k=TOP,
                  state_path=path, checkpoint_every=2)
  assert os.path.exists(path) and not any(f.endswith(".tmp") for f in os.listdir(tmp_path))
  again = _Flaky(dataset)
  resumed = stats.compute(model, again, LAYERS, batch_size=6, top_k=TOP, state_path=path,
                          checkpoint_every=2)
  assert min(again.reads) == 12  # batches 0 and 1 came from the checkpoint.
  for layer in LAYERS:
    for k, v in streamed.layers[layer].items():
      np.testing.assert_array_equal(resumed.layers[layer][k], v, err_msg=f"{layer}/{k}")
  with pytest.raises(ValueError, match="different statistics pass"):
    stats.compute(model, dataset, LAYERS, batch_size=5, top_k=TOP, state_path=path)


def test_saved_file_feeds_gallery_and_objective(model, dataset, streamed, tmp_path):
  path = str(tmp_path / "stats.npz")
  thumbs = stats.thumbnails(model, streamed, dataset, size=8, batch_size=6)
  assert thumbs["a"].shape == (5, TOP, 8, 8, 3) and thumbs["a"].dtype == np.uint8
  streamed.save(path, dataset, thumbs)
  loaded = stats.UnitStats.load(path)
  np.testing.assert_array_equal(loaded.layers["a"]["top_clips"], streamed.layers["a"]["top_clips"])
  g = gallery.load_stats(path)
  np.testing.assert_allclose(g["b"].per_class_max, streamed.layers["b"]["per_class_max"])
  assert g["b"].class_names == list(dataset.class_names)
  top = streamed.layers["logits"]
  assert [c["score"] for c in g["logits"].top_clips[2]] == pytest.approx(top["top_scores"][2])
  assert g["logits"].top_clips[2][0]["class"] == f"class{top['top_labels'][2, 0]}"

  # objective.a_hat_from: the class-logit term is divided by the file's a_hat.
  cfg = config_lib.default_config().objective
  cfg.kind, cfg.a_hat_from = "class_logit", path
  target = optimize.build_target(model, "logits", cfg)
  acts = {"logits": jnp.asarray([[1.0, 2.0, 3.0, 4.0]])}
  np.testing.assert_allclose([float(target(acts, u)) for u in range(K)],
                             np.arange(1, K + 1) / top["a_hat"], rtol=1e-6)
  cfg.kind = "channel"
  channel = optimize.build_target(model, "a", cfg)
  a = jnp.ones((1, 2, 4, 4, 5))
  np.testing.assert_allclose(float(channel({"a": a}, 3)),
                             32 / (9 * streamed.layers["a"]["a_hat"][3]), rtol=1e-6)
  config = config_lib.default_config()
  config.objective.kind, config.objective.a_hat_from = "class_logit", path
  config.steps = 2
  result = optimize.Visualizer(model, "logits", config).run([0, 1], log_progress=False)
  assert result.a_hat_given
  with pytest.raises(ValueError, match="no a_hat for layer 'nope'.*layers in the file: a, b"):
    a_hat.load_a_hat(path, "nope")
  with pytest.raises(ValueError, match="a_hat for .* units, the model's layer has 9"):
    a_hat.load_a_hat(path, "a", num_units=9)
  with pytest.raises(FileNotFoundError, match="python -m stviz_jax.stats"):
    a_hat.load_a_hat(str(tmp_path / "missing.npz"), "a")


def test_dead_units_fall_back_to_one(tmp_path):
  path = str(tmp_path / "s.npz")
  np.savez(path, **{"x/a_hat": np.asarray([2.0, 0.0, -1.0], np.float32)})
  np.testing.assert_array_equal(a_hat.load_a_hat(path, "x", 3), [2.0, 1.0, 1.0])


@pytest.mark.slow
def test_trained_synthetic_class_units_fire_most_for_their_class():
  """Known answer on the shipped model: logit c's per-class maximum peaks at class c."""
  model = models.load("synthetic_two_stream")
  classes = synthetic.grid_classes()
  assert tuple(c.name for c in classes) == model.labels
  ds = clips.SyntheticClips(classes, 96, 7, synthetic.ClipSpec(distractors=2))
  st = stats.compute(model, ds, ["logits"], batch_size=48, top_k=4)
  per_class = st.layers["logits"]["per_class_max"]
  assert (np.argmax(per_class, 1) == np.arange(12)).all()
  assert (st.layers["logits"]["top_labels"][:, 0] == np.arange(12)).all()
