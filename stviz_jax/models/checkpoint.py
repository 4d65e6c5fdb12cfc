"""Converted weights on disk: an orbax checkpoint of Flax variables plus metadata.

Layout of a weights directory::

    <path>/variables/     orbax StandardCheckpointer tree (the Flax variables)
    <path>/metadata.json  {"architecture", "source", "source_sha256", ...}

Writes go to a temporary sibling directory that is renamed into place, so an
interrupted conversion never leaves a half-written checkpoint at `path`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def save(path: str, variables: Any, metadata: dict) -> None:
  """Saves `variables` and `metadata` at `path` atomically (replacing it)."""
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(path) + ".tmp")
  try:
    variables = jax.tree.map(np.asarray, variables)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(tmp, "variables"), variables)
    ckpt.wait_until_finished()
    with open(os.path.join(tmp, "metadata.json"), "w") as f:
      json.dump(metadata, f, indent=2)
    if os.path.exists(path):
      shutil.rmtree(path)
    os.replace(tmp, path)
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


def restore_for(path: str, architecture: str) -> Any:
  """Restores variables and checks they were converted for `architecture`."""
  variables, metadata = restore(path)
  arch = metadata.get("architecture")
  if arch != architecture:
    raise ValueError(f"{path}: weights are for architecture {arch!r}, "
                     f"not {architecture!r}")
  return variables
