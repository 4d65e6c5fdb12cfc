"""Converted weights on disk: an orbax checkpoint of Flax variables plus metadata.

Layout of a weights directory::

    <path>/variables/     orbax StandardCheckpointer tree (the Flax variables)
    <path>/metadata.json  {"architecture", "source", "source_sha256", ...}

Writes go to a temporary sibling directory that is swapped into place, so an
interrupted conversion never leaves a half-written checkpoint at `path`; a
directory that is not a previous conversion is never replaced unasked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from stviz_jax import files


def digest(variables: Any) -> str:
  """sha256 of a variables tree's content: every leaf's path, dtype, shape and bytes.

  Two trees have the same digest exactly when they hold the same arrays under
  the same names, wherever they were loaded from.
  """
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.data)
  return h.hexdigest()


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


# What a weights directory holds; anything else in it is not ours to delete.
ENTRIES = ("metadata.json", "variables")


def is_weights_dir(path: str) -> bool:
  """Whether `path` holds exactly a weights directory written by `save`."""
  return (os.path.isdir(path) and os.path.isfile(os.path.join(path, "metadata.json"))
          and os.path.isdir(os.path.join(path, "variables"))
          and set(os.listdir(path)) <= set(ENTRIES))


def _inputs_of(metadata: dict) -> list[str]:
  """The source files a converter read, as recorded in its metadata."""
  paths = [metadata.get("source"), metadata.get("prototxt_source")]
  for part in metadata.get("parts") or ():
    if isinstance(part, dict):
      paths += [part.get("prototxt"), part.get("caffemodel")]
  return [p for p in paths if isinstance(p, str) and p]


def _inside(path: str, folder: str) -> bool:
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output(path: str, *, overwrite: bool = False, inputs=()) -> None:
  """Raises unless writing a weights directory at `path` loses nothing unasked.

  Allowed: a path that does not exist, an empty directory, a previous
  conversion (`is_weights_dir`), or with `overwrite` any directory. Never: a
  path that is a file, or a directory holding one of the `inputs`.

  Raises:
    ValueError: one line naming `path`, what is in the way and what to do.
  """
  path = os.path.abspath(path)
  if os.path.lexists(path) and not os.path.isdir(path):
    raise ValueError(f"{path}: exists and is a file, not a weights directory; "
                     "give a new directory as the output")
  for src in inputs:
    if src and _inside(src, path):
      raise ValueError(f"{path}: holds the input {src}, which replacing the directory "
                       "would delete; write the weights to another directory")
  if os.path.isdir(path) and os.listdir(path) and not is_weights_dir(path) and not overwrite:
    names = sorted(os.listdir(path))
    shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
    raise ValueError(f"{path}: directory is not empty ({shown}) and is not a previous "
                     "conversion; give a new or empty directory, or --overwrite to "
                     "replace it")


def _exchange(a: str, b: str) -> bool:
  """Swaps two directories in one step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
  try:
    import ctypes  # pylint: disable=import-outside-toplevel
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd, rename_exchange = -100, 2
  return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


_TMP_SUFFIX = ".tmp"  # `save` writes into `<path>.tmpXXXXXXXX` (mkdtemp), then swaps.


def remove_stale_temps(path: str) -> list[str]:
  """Removes the temporary directories a killed `save` to `path` left beside it
  (`<path>.tmpXXXXXXXX`, and its `.old` when the exchange was not atomic);
  returns their paths. Only directories so named that hold nothing but what
  `save` writes are touched."""
  pattern = re.compile(re.escape(os.path.basename(path) + _TMP_SUFFIX) +
                       r"[a-z0-9_]{8}(\.old)?$")
  parent, removed = os.path.dirname(path), []
  for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else ():
    p = os.path.join(parent, name)
    if (pattern.match(name) and os.path.isdir(p) and not os.path.islink(p)
        and set(os.listdir(p)) <= {"variables", "metadata.json"}):
      shutil.rmtree(p)
      removed.append(p)
  if removed:
    logging.info("%s: removed %d temporary folder(s) of an interrupted save", path, len(removed))
  return removed


def save(path: str, variables: Any, metadata: dict, *, overwrite: bool = False,
         inputs=()) -> None:
  """Saves `variables` and `metadata` at `path` atomically.

  `path` must pass `check_output` (a previous conversion is replaced; any
  other non-empty directory only with `overwrite`; the converter's `inputs`,
  and the sources named in `metadata`, are never deleted). Everything is
  written to a temporary sibling directory that is then swapped with `path`
  in one rename, so a kill leaves either the old or the new weights there.
  """
  path = os.path.abspath(path)
  inputs = list(inputs) + _inputs_of(metadata)
  check_output(path, overwrite=overwrite, inputs=inputs)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  remove_stale_temps(path)
  tmp = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(path) + _TMP_SUFFIX)
  try:
    variables = jax.tree.map(np.asarray, variables)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(tmp, "variables"), variables)
    ckpt.wait_until_finished()
    with open(os.path.join(tmp, "metadata.json"), "w") as f:
      json.dump(metadata, f, indent=2)
    os.chmod(tmp, 0o777 & ~files.umask())  # mkdtemp makes it 0700.
    check_output(path, overwrite=overwrite, inputs=inputs)  # unchanged while we wrote?
    if not os.path.isdir(path):
      os.replace(tmp, path)
    elif _exchange(tmp, path):
      shutil.rmtree(tmp)  # now the old contents.
    else:  # no atomic exchange here: the old directory is out of the way for a moment.
      old = tmp + ".old"
      os.rename(path, old)
      os.rename(tmp, path)
      shutil.rmtree(old)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def restore(path: str) -> tuple[Any, dict]:
  """Returns `(variables, metadata)` saved by `save`."""
  path = os.path.abspath(path)
  meta_file = os.path.join(path, "metadata.json")
  if not os.path.exists(meta_file):
    raise FileNotFoundError(f"{path}: not a stviz_jax weights directory "
                            "(no metadata.json); convert weights with converters.*")
  with open(meta_file) as f:
    metadata = json.load(f)
  variables = ocp.StandardCheckpointer().restore(os.path.join(path, "variables"))
  return variables, metadata


def flatten(tree: Mapping[str, Any], prefix: str = "", leaf: bool = False) -> dict[str, Any]:
  """`{'a': {'b': x}}` -> `{'a/b': x}` (leaves as numpy arrays when `leaf`)."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      out.update(flatten(value, name, leaf))
    else:
      out[name] = np.asarray(value) if leaf else value
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """`{'a/b': x}` -> `{'a': {'b': x}}` (the inverse of `flatten`)."""
  out: dict[str, Any] = {}
  for name, value in flat.items():
    node = out
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


class ConversionError(ValueError):
  """Weights that cannot be read or do not fit their target: the one base of
  every converter's errors (`converters.*`, the zoo's own weight readers), so a
  caller catches one class. A ValueError, hence exit code 2 in `stviz_jax.cli`."""


def check_width(width: float, weights: str | None) -> None:
  """Converted `weights` fit only the full-width network (`width=1.0`)."""
  if weights and width != 1.0:
    raise ValueError(f"width={width} builds a narrowed network; converted "
                     "weights need width=1.0")


def restore_for(path: str, architecture: str) -> Any:
  """Restores variables and checks they were converted for `architecture`."""
  variables, metadata = restore(path)
  arch = metadata.get("architecture")
  if arch != architecture:
    raise ValueError(f"{path}: weights are for architecture {arch!r}, "
                     f"not {architecture!r}")
  return variables
