"""Converted layer graphs on disk and as `Model`s, with no framework needed.

A network converted from another framework (`stviz_jax.models.torch_graph`)
is a `netgraph.Net` plus its variables and input streams. This module is the
part of it that needs neither torch nor the converter:

* `model(net, variables, streams)`: the `Model` (taps named by the source's
  layer names, `logits` last);
* `save(path, model, metadata)` / `load(path)`: a weights directory
  (`stviz_jax.models.checkpoint`: atomic, never replacing a foreign non-empty
  directory) whose `metadata.json` also holds the graph as JSON
  (`metadata['graph']`), so the main job reads it with
  `--config.model=converted --config.weights=DIR`
  (`models.load('converted', weights=DIR)`, registered in `zoo/converted.py`);
* `two_stream(appearance, motion)`: late fusion of two converted towers (the
  weighted sum of their class scores), optionally with a named fusion point.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from stviz_jax.models import base, checkpoint, netgraph
from stviz_jax.models.specs import StreamSpec

# Every node kind a graph file may hold, by class name.
_KINDS = {cls.__name__: cls for cls in (
    netgraph.Conv, netgraph.Pool, netgraph.Concat, netgraph.Add, netgraph.Eltwise,
    netgraph.Dense, netgraph.Activation, netgraph.Affine, netgraph.LRN,
    netgraph.Reshape, netgraph.Constant)}
_PRECISIONS = {None: None, "highest": jax.lax.Precision.HIGHEST}
GRAPH_FORMAT = 1


def model(net: netgraph.Net, variables: Any, streams: Mapping[str, StreamSpec], *,
          name: str = "converted", labels: Sequence[str] | None = None) -> base.Model:
  """The `Model` of a converted `net` (its taps by `net.tap_names`, then logits)."""
  variables = jax.tree.map(np.asarray, variables)
  layers = tuple(net.tap_names or net.taps) + (base.LOGITS,)
  return base.wrap(net, variables, dict(streams), layers=layers, name=name,
                   labels=labels)


def _tuples(v):
  """JSON lists back to the tuples the frozen node dataclasses hold."""
  return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def graph_to_json(net: netgraph.Net, streams: Mapping[str, StreamSpec]) -> dict:
  """A JSON-able description of `net` and its input streams (`graph_from_json`)."""
  nodes = [{"node": type(n).__name__, "fields": dataclasses.asdict(n)} for n in net.nodes]
  precision = None if net.precision is None else "highest"
  return {
      "format": GRAPH_FORMAT, "nodes": nodes, "taps": list(net.taps),
      "tap_names": list(net.tap_names), "logits": list(net.logits),
      "logit_weights": list(net.logit_weights), "logits_reduce": net.logits_reduce,
      "precision": precision,
      "inputs": [dataclasses.asdict(s) for s in net.inputs],
      "streams": {k: dataclasses.asdict(s) for k, s in streams.items()}}


def graph_from_json(d: Mapping, source: str) -> tuple[netgraph.Net, dict[str, StreamSpec]]:
  """`(net, streams)` from `graph_to_json`'s output; `source` names the file in errors."""
  if d.get("format") != GRAPH_FORMAT:
    raise checkpoint.ConversionError(
        f"{source}: graph format {d.get('format')!r}; this version reads {GRAPH_FORMAT}")
  nodes = []
  for i, n in enumerate(d["nodes"]):
    kind = n.get("node")
    if kind not in _KINDS:
      raise checkpoint.ConversionError(
          f"{source}: graph node {i} is a {kind!r}; valid: {', '.join(_KINDS)}")
    nodes.append(_KINDS[kind](**{k: _tuples(v) for k, v in n["fields"].items()}))
  net = netgraph.Net(
      nodes=tuple(nodes), taps=tuple(d["taps"]), tap_names=tuple(d["tap_names"]),
      logits=tuple(d["logits"]), logit_weights=tuple(d["logit_weights"]),
      logits_reduce=d["logits_reduce"], precision=_PRECISIONS[d["precision"]],
      inputs=tuple(netgraph.StreamInput(**s) for s in d["inputs"]))
  streams = {k: StreamSpec(**{f: _tuples(v) for f, v in s.items()})
             for k, s in d["streams"].items()}
  return net, streams


def save(path: str, m: base.Model, metadata: Mapping[str, Any], *,
         overwrite: bool = False, inputs: Sequence[str] = ()) -> None:
  """Writes converted model `m` (a `netgraph.Net` model) as a weights directory.

  Args:
    path: the directory (see `checkpoint.save`: atomic; a previous conversion
      is replaced, another non-empty directory only with `overwrite`).
    m: a model from `model`, `two_stream` or `torch_graph.from_torch`.
    metadata: recorded as is (`architecture` defaults to 'converted').
    overwrite: replace a non-empty directory that is not a conversion.
    inputs: source files that must not be inside `path`.
  """
  if not isinstance(m.module, netgraph.Net):
    raise ValueError(f"model {m.name!r} is not a converted layer graph (netgraph.Net)")
  meta = {"architecture": "converted", "name": m.name,
          "labels": list(m.labels) if m.labels else None}
  meta.update(metadata)
  meta["graph"] = graph_to_json(m.module, m.spec.streams)
  checkpoint.save(path, m.variables, meta, overwrite=overwrite, inputs=inputs)


def load(path: str, *, name: str | None = None) -> base.Model:
  """The model saved by `save` at `path` (weights checked against its graph)."""
  variables, metadata = checkpoint.restore(path)
  if "graph" not in metadata:
    raise checkpoint.ConversionError(
        f"{path}: weights directory has no graph (metadata['graph']); it was written "
        f"for architecture {metadata.get('architecture')!r}: load it by that name")
  net, streams = graph_from_json(metadata["graph"], path)
  problems = variable_problems(net, streams, variables)
  if problems:
    raise checkpoint.ConversionError(f"{path}: variables do not fit the graph: "
                                     + "; ".join(problems))
  return model(net, variables, streams, name=name or metadata.get("name") or "converted",
               labels=metadata.get("labels"))


def variable_problems(net: netgraph.Net, streams: Mapping[str, StreamSpec],
                      variables: Any) -> list[str]:
  """Every variable missing, unexpected or mis-shaped for `net`, as text."""
  dummy = {k: jax.ShapeDtypeStruct((1,) + s.shape, np.float32) for k, s in streams.items()}
  want = checkpoint.flatten(jax.eval_shape(net.init, jax.random.PRNGKey(0), dummy))
  got = checkpoint.flatten(variables)
  problems = [f"missing {k} {tuple(want[k].shape)}" for k in sorted(set(want) - set(got))]
  problems += [f"unexpected {k}" for k in sorted(set(got) - set(want))]
  problems += [f"{k}: shape {tuple(np.shape(got[k]))}, expected {tuple(want[k].shape)}"
               for k in sorted(set(want) & set(got))
               if tuple(np.shape(got[k])) != tuple(want[k].shape)]
  if len(problems) > 8:
    problems = problems[:8] + [f"(+{len(problems) - 8} more)"]
  return problems


def _prefixed(net: netgraph.Net, prefix: str, renames: Mapping[str, str] = ()):
  """`net`'s nodes with names and blobs under `prefix` ('rgb/'); a node reading
  a blob in `renames` reads its new name instead (a fusion point)."""
  renames = dict(renames)
  blob = lambda b: renames.get(prefix + b, prefix + b)
  out = []
  for n in net.nodes:
    fields = {"name": prefix + n.name}
    if getattr(n, "bottom", None) is not None:
      fields["bottom"] = blob(n.bottom)
    if getattr(n, "bottoms", None) is not None:
      fields["bottoms"] = tuple(blob(b) for b in n.bottoms)
    fields["top"] = prefix + netgraph.top(n)
    out.append(dataclasses.replace(n, **fields))
  return out


def two_stream(appearance: base.Model, motion: base.Model, *,
               logit_weights: Sequence[float] = (1.0, 1.5), fusion: str | None = None,
               name: str = "two_stream") -> base.Model:
  """One two-stream `Model` from two converted towers, fused late.

  The logits are `w_a * appearance logits + w_m * motion logits` (the
  two-stream papers' weighted sum of class scores; default 1 : 1.5 as TSN).
  Each tower's parameters, blobs and taps go under its stream's name
  (`rgb/layer4`, `flow/layer4`).

  Args:
    appearance, motion: converted models of one stream each, with different
      stream names (`from_torch(..., stream='rgb')`, `stream='flow'`).
    logit_weights: weights of the two towers' logits.
    fusion: a tap of both towers with equal shapes: the sum of the two is tap
      `fusion/<layer>` and the appearance tower continues from it (Feichtenhofer
      et al.'s sum fusion, with the motion tower kept to the end).
    name: model name.
  """
  towers = []
  for role, m in (("appearance", appearance), ("motion", motion)):
    if not isinstance(m.module, netgraph.Net) or len(m.spec.streams) != 1:
      raise ValueError(f"two_stream: the {role} tower {m.name!r} must be a converted "
                       "model of one stream (from_torch or models.load('converted'))")
    towers.append((next(iter(m.spec.streams)), m))
  (sa, a), (sm, mo) = towers
  if sa == sm:
    raise ValueError(f"two_stream: both towers read stream {sa!r}; convert one with "
                     "stream='rgb' and the other with stream='flow'")
  if a.module.logits_reduce != mo.module.logits_reduce:
    raise ValueError("two_stream: the towers' logits are reduced differently "
                     f"({a.module.logits_reduce!r} vs {mo.module.logits_reduce!r})")
  if len(logit_weights) != 2:
    raise ValueError(f"two_stream: logit_weights {tuple(logit_weights)}: give two weights")
  renames, fused_nodes, taps, names = {}, [], [], []
  if fusion is not None:
    blobs = []
    for s, m in towers:
      tap_of = dict(zip(m.module.tap_names or m.module.taps, m.module.taps))
      if fusion not in tap_of:
        raise ValueError(f"two_stream: fusion point {fusion!r} is not a layer of the "
                         f"{s} tower; its layers: {', '.join(list(tap_of)[:20])}, ...")
      blobs.append(f"{s}/{tap_of[fusion]}")
    shape_a, shape_m = (m.spec.feature_shape(fusion) for _, m in towers)
    if shape_a != shape_m:
      raise ValueError(f"two_stream: fusion point {fusion!r} has shape {shape_a} in the "
                       f"{sa} tower but {shape_m} in the {sm} tower; choose a layer of "
                       "equal shapes")
    fused = f"{sa}/fusion"
    fused_nodes = [netgraph.Add(fused, tuple(blobs))]
    renames[blobs[0]] = fused
  nodes = _prefixed(mo.module, f"{sm}/")
  for n in _prefixed(a.module, f"{sa}/", renames):
    nodes.append(n)
    if fused_nodes and netgraph.top(n) == fused_nodes[0].bottoms[0]:
      nodes += fused_nodes
      taps.append(fused_nodes[0].name)
      names.append(f"fusion/{fusion}")
  for s, m in ((sm, mo), (sa, a)):
    taps += [f"{s}/{t}" for t in m.module.taps]
    names += [f"{s}/{t}" for t in (m.module.tap_names or m.module.taps)]
  net = netgraph.Net(
      nodes=tuple(nodes), taps=tuple(taps), tap_names=tuple(names),
      logits=(f"{sa}/{a.module.logits[0]}", f"{sm}/{mo.module.logits[0]}"),
      logit_weights=tuple(float(w) for w in logit_weights),
      logits_reduce=a.module.logits_reduce, precision=a.module.precision,
      inputs=tuple(dataclasses.replace(i, blob=f"{s}/{i.blob}")
                   for s, m in towers for i in m.module.inputs))
  variables = {"params": {sa: a.variables["params"], sm: mo.variables["params"]}}
  streams = {sa: a.spec.streams[sa], sm: mo.spec.streams[sm]}
  return model(net, variables, streams, name=name, labels=a.labels or mo.labels)
