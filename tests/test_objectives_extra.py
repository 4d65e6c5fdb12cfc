"""Lucid-style objectives: direction, neuron at a location, channel interaction,
class contrast, Gram diversity (numerics against NumPy, composition, purity,
known answers on the hand-built network, config errors)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stviz_jax as sv
from stviz_jax import objective
import handbuilt

ACTS = {"a": jax.random.normal(jax.random.PRNGKey(0), (1, 2, 3, 3, 4))}


def test_direction_is_the_projection_summed_over_positions():
  d = np.array([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 1.0, 1.0]], np.float32)
  a = np.asarray(ACTS["a"])
  obj = objective.direction("a", d, rho=2.0, a_hat=[1.0, 4.0])
  for u in range(2):
    assert float(obj(ACTS, u)) == pytest.approx((a @ d[u]).sum() / (4.0 * [1.0, 4.0][u]),
                                                rel=1e-5)
  one = objective.direction("a", d[0])
  assert float(one(ACTS, 1)) == pytest.approx((a @ d[0]).sum(), rel=1e-5)
  cos = objective.direction("a", d[0], cosine=True)
  dots = a @ d[0]
  expected = np.sum(dots * np.maximum(dots / (np.linalg.norm(a, axis=-1)
                                              * np.linalg.norm(d[0])), 0))
  assert float(cos(ACTS, 0)) == pytest.approx(expected, rel=1e-4)
  with pytest.raises(ValueError, match="direction has 3 channels; layer 'a' has 4"):
    objective.direction("a", [1.0, 0.0, 0.0])(ACTS, 0)


def test_neuron_interaction_and_contrast_values():
  a = np.asarray(ACTS["a"])
  assert float(objective.neuron("a", (1, 2, 0))(ACTS, 3)) == pytest.approx(a[0, 1, 2, 0, 3])
  inter = objective.channel_interaction("a", suppress=[1, 0, 0, 0], weight=0.5)
  assert float(inter(ACTS, 0)) == pytest.approx(a[..., 0].sum() - 0.5 * a[..., 1].sum(), rel=1e-5)
  assert float(inter(ACTS, 2)) == pytest.approx(a[..., 2].sum() - 0.5 * a[..., 0].sum(), rel=1e-5)
  logits = {sv.models.LOGITS: jnp.array([[3.0, 1.0, -2.0]])}
  assert float(objective.class_contrast(2)(logits, 0)) == pytest.approx(5.0)
  assert float(objective.class_contrast([1, 2, 0], a_hat=[1.0, 2.0, 4.0])(logits, 1)) == (
      pytest.approx(1.0 / 2.0 + 2.0 / 4.0))


def _lucid_diversity(a):
  """Lucid's objectives.diversity in NumPy (similarity), negated."""
  k, c = a.shape[0], a.shape[-1]
  flat = a.reshape(k, -1, c)
  grams = np.einsum("kpc,kpd->kcd", flat, flat)
  grams = grams / np.linalg.norm(grams.reshape(k, -1), axis=1)[:, None, None]
  sim = sum(np.sum(grams[i] * grams[j]) for i, j in itertools.permutations(range(k), 2))
  return -sim / k


def test_diversity_matches_lucid_and_is_a_batch_term():
  batch = {"a": jax.random.normal(jax.random.PRNGKey(1), (5, 2, 3, 3, 4))}
  div = objective.diversity("a")
  assert float(div.batched(batch, 0)) == pytest.approx(
      _lucid_diversity(np.asarray(batch["a"])), rel=1e-5)
  same = {"a": jnp.broadcast_to(batch["a"][:1], (3, 2, 3, 3, 4))}
  assert float(div.batched(same, 0)) == pytest.approx(-2.0, rel=1e-5)  # -(K - 1).
  assert float(div(ACTS, 0)) == 0.0  # one example has no pairs.
  combo = objective.channel("a") + 2.0 * div - 0.5 * objective.channel("a", a_hat=2.0)
  a = np.asarray(batch["a"])
  expected = 0.75 * a[..., 1].sum() + 2.0 * _lucid_diversity(a)
  assert float(combo.batched(batch, 1)) == pytest.approx(expected, rel=1e-5)
  assert float(combo(ACTS, 1)) == pytest.approx(0.75 * np.asarray(ACTS["a"])[..., 1].sum(),
                                                rel=1e-5)
  # Pure: jit, vmap over units and grad through the batch term.
  f = jax.jit(jax.vmap(lambda u: combo.batched(batch, u)))
  assert f(jnp.arange(4)).shape == (4,)
  g = jax.grad(lambda x: div.batched({"a": x}, 0))(batch["a"])
  assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0


@pytest.fixture(scope="module")
def hand():
  return handbuilt.model()


def _config(steps=40, **objective_fields):
  c = sv.default_config()
  c.steps = steps
  for k, v in objective_fields.items():
    setattr(c.objective, k, v)
  return c


def test_interaction_and_contrast_known_answers(hand):
  # Rightward (0) while suppressing downward (2): the flow goes right and up.
  r = sv.visualize(hand, "motion", [0], _config(kind="channel_interaction", other=2), seed=0)
  u, v = r.inputs["flow"][0].reshape(-1, 2).mean(0)
  assert u > 0 and v < 0 and abs(abs(u) - abs(v)) < 0.2 * abs(u)  # 45 degrees.
  # Class red (4) minus class green (5): red up, green down, blue untouched.
  r = sv.visualize(hand, "logits", [4], _config(kind="class_contrast", other=5), seed=0)
  red, green, blue = r.inputs["rgb"][0].reshape(-1, 3).mean(0)
  assert red > 0 > green and abs(blue) < 0.1 * red


def test_direction_and_located_neuron_known_answers(hand):
  # Direction (1, 0, 1, 0) over (right, left, down, up): motion to the lower right.
  r = sv.visualize(hand, "motion", [0], _config(kind="direction", direction=(1.0, 0.0, 1.0, 0.0)),
                   seed=0)
  u, v = r.inputs["flow"][0].reshape(-1, 2).mean(0)
  assert u > 0 and v > 0 and abs(u - v) < 0.2 * u
  r = sv.visualize(hand, "motion", [3], _config(kind="neuron", location=(2, 3, 12)), seed=0)
  flow = r.inputs["flow"][0]
  bound = 160 * hand.spec.streams["flow"].pixel_scale
  assert flow[2, 3, 12, 1] < -0.5 * bound  # upward, at that location only.
  assert -flow[2, 3, 12, 1] > 5 * np.abs(flow[..., 1]).mean()


def test_diversity_makes_samples_of_one_unit_more_varied(hand):
  vis = sv.Visualizer(hand, "motion", _config(steps=60))

  def spread(r):
    f = r.inputs["flow"].reshape(len(r.units), -1)
    return np.mean([np.linalg.norm(f[i] - f[j]) for i, j in itertools.combinations(range(len(f)), 2)])

  plain = vis.run_diverse(0, samples=4, seed=0, weight=0.0)
  diverse = vis.run_diverse(0, samples=4, seed=0, weight=3000.0)
  assert list(diverse.units) == [0, 0, 0, 0] and diverse.inputs["flow"].shape == (4, 3, 16, 16, 2)
  bound = 160 * hand.spec.streams["flow"].pixel_scale
  # Without the term every sample saturates rightward: nearly identical.
  assert spread(plain) < 0.01 * bound * np.sqrt(3 * 16 * 16)
  assert spread(diverse) > 50 * spread(plain)
  # They still move right (the unit's target), fanned out up and down.
  means = diverse.inputs["flow"].reshape(4, -1, 2).mean(1)
  assert (means[:, 0] > 0.5 * bound).all()
  assert means[:, 1].max() > 0.2 * bound and means[:, 1].min() < -0.2 * bound
  # Diversity is bought with target activation, never the other way round.
  np.testing.assert_array_less(diverse.activations, plain.activations + 1e-3)


def test_config_errors_name_the_field(hand):
  with pytest.raises(ValueError, match="needs objective.direction"):
    sv.Visualizer(hand, "motion", _config(kind="direction"))
  with pytest.raises(ValueError, match="needs objective.other"):
    sv.Visualizer(hand, "motion", _config(kind="channel_interaction"))
  with pytest.raises(ValueError, match=r"out of range for layer 'motion'"):
    sv.Visualizer(hand, "motion", _config(kind="channel_interaction", other=9))
  with pytest.raises(ValueError, match="'class_contrast' needs layer 'logits'"):
    sv.Visualizer(hand, "motion", _config(kind="class_contrast", other=1))
  with pytest.raises(ValueError, match="unknown objective.kind 'max'; valid: .*direction"):
    sv.Visualizer(hand, "motion", _config(kind="max"))
  c = _config()
  c.transforms = "jitter, twist(3)"
  with pytest.raises(ValueError, match="unknown transform 'twist'"):
    sv.Visualizer(hand, "motion", c)
  c = _config()
  c.param.kind = "wavelet"
  with pytest.raises(ValueError, match="unknown param.kind 'wavelet'"):
    sv.Visualizer(hand, "motion", c)
  with pytest.raises(ValueError, match="samples >= 2"):
    sv.Visualizer(hand, "motion", _config()).run_diverse(0, samples=1)


def test_class_score_log_prob_is_the_log_softmax_and_unknown_scores_are_named():
  logits = jnp.asarray([[2.0, -1.0, 0.5]])
  acts = {"logits": logits}
  plain = objective.class_logit().fn(acts, 2)
  log_prob = objective.class_logit(score="log_prob").fn(acts, 2)
  assert float(plain) == pytest.approx(0.5)
  assert float(log_prob) == pytest.approx(float(jax.nn.log_softmax(logits)[0, 2]))
  with pytest.raises(ValueError, match="objective.class_score 'prob'; valid: logit, log_prob"):
    objective.class_logit(score="prob")
