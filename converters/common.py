"""What every converter shares: strict matching of source and target tensors, saving,
and building a converted graph into a `netgraph.Net`."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from stviz_jax.models import checkpoint, netgraph
# The base of every converter error; `check_complete` raises it itself for
# source weights that do not match the target (missing/unexpected/mismatched).
from stviz_jax.models.checkpoint import ConversionError, flatten, unflatten  # noqa: F401


def _short(names: Iterable[str], limit: int = 12) -> str:
  names = sorted(names)
  more = len(names) - limit
  return ", ".join(names[:limit]) + (f" (+{more} more)" if more > 0 else "")


def check_complete(source: str, *, missing: Iterable[str] = (),
                   unexpected: Iterable[str] = (),
                   mismatched: Iterable[str] = ()) -> None:
  """Raises one one-line `ConversionError` listing every problem, or returns.

  Args:
    source: the file being converted (named in the message).
    missing: target names no source tensor filled.
    unexpected: source names nothing consumed.
    mismatched: human-readable shape mismatches ('fc6.weight (4096, 25088) vs
      expected (4096, 512, 7, 7)').
  """
  missing, unexpected, mismatched = list(missing), list(unexpected), list(mismatched)
  parts = []
  if missing:
    parts.append(f"missing {len(missing)}: {_short(missing)}")
  if unexpected:
    parts.append(f"unexpected {len(unexpected)}: {_short(unexpected)}")
  if mismatched:
    parts.append(f"shape mismatches: {'; '.join(mismatched[:8])}"
                 + (f" (+{len(mismatched) - 8} more)" if len(mismatched) > 8 else ""))
  if parts:
    raise ConversionError(f"{source}: weights do not match the target - " + "; ".join(parts))


def fill_like(template: Mapping, values: Mapping[str, np.ndarray], source: str) -> dict:
  """Places `values` ('a/b' -> array) into the structure of `template`, strictly.

  Every leaf of `template` must get a value of the same shape and every value
  must land somewhere; otherwise a `ConversionError` names what is wrong.
  """
  target = flatten(template)
  missing = [k for k in target if k not in values]
  unexpected = [k for k in values if k not in target]
  mismatched = [f"{k} {tuple(np.shape(values[k]))} vs expected {tuple(np.shape(t))}"
                for k, t in target.items()
                if k in values and tuple(np.shape(values[k])) != tuple(np.shape(t))]
  check_complete(source, missing=missing, unexpected=unexpected, mismatched=mismatched)
  return unflatten({k: np.asarray(values[k], np.float32) for k in target})


def build_net(steps: Iterable[tuple[Callable, Sequence[int], int]],
              taps: Sequence[tuple[str, int]], count: int, *, logits: int,
              inputs: Sequence[tuple[str, int]], logits_reduce: str) -> netgraph.Net:
  """A converted net over values `0 .. count - 1` as a `netgraph.Net`.

  Convolutions and dense layers compute at `Precision.HIGHEST`, as the
  source frameworks do in float32 (the converters' tests compare with their
  outputs).

  Args:
    steps: per layer, in order, `(make, input values, output value)`;
      `make(bottoms, top)` returns its netgraph node given blob names.
    taps: `(feature name, value)`, in network order.
    count: how many values there are.
    logits: the value that is the logits.
    inputs: `(stream, value)` per net input.
    logits_reduce: see `netgraph.Net`.
  """
  names = _blob_names(taps, count)
  nodes = tuple(make([names[v] for v in ins], names[out]) for make, ins, out in steps)
  return netgraph.Net(
      nodes=nodes, taps=tuple(names[v] for _, v in taps),
      tap_names=tuple(name for name, _ in taps), logits=(names[logits],),
      logits_reduce=logits_reduce,
      inputs=tuple(netgraph.StreamInput(stream, names[v]) for stream, v in inputs),
      precision=jax.lax.Precision.HIGHEST)


def _blob_names(taps: Iterable[tuple[str, int]], count: int) -> dict[int, str]:
  """`netgraph` blob names of a converted net's values `0 .. count - 1`.

  A value is named after its first tap, so `layers.conv_for(name)` picks the
  convolution the visualised layer reads; a value without taps gets
  `'#<value>'` with as many '#' as it takes to be no tap's name (a blob named
  like another value's tap would take that tap's `only_channel` restriction).
  """
  taps = list(taps)
  names: dict[int, str] = {}
  for name, v in taps:
    names.setdefault(v, name)
  taken = {name for name, _ in taps}
  for v in range(count):
    if v not in names:
      fresh = f"#{v}"
      while fresh in taken:
        fresh = "#" + fresh
      names[v] = fresh
  return names


def save(output: str, variables: Any, *, source: str, architecture: str,
         fmt: str, overwrite: bool = False, **extra) -> None:
  """Writes a stviz_jax weights directory (atomic; see `stviz_jax.models.checkpoint`).

  Metadata records the source file, its sha256, the architecture and format, so
  a checkpoint can always be traced back to the file it came from. `output`
  may be new, empty or a previous conversion; any other directory only with
  `overwrite` (`checkpoint.check_output`).
  """
  metadata = {"architecture": architecture, "source": os.path.abspath(source),
              "source_sha256": checkpoint.sha256(source), "format": fmt}
  metadata.update(extra)
  checkpoint.save(output, variables, metadata, overwrite=overwrite)


def add_output_flags(parser) -> None:
  """The converter CLIs' --overwrite flag."""
  parser.add_argument("--overwrite", action="store_true",
                      help="replace OUTPUT even if it is a non-empty directory that is "
                           "not a previous conversion (its input files are never deleted)")


def report_written(output: str, model, hint: str) -> None:
  """The converter CLIs' last line: what was written and how to load it."""
  streams = {k: v.shape for k, v in model.spec.streams.items()}
  print(f"wrote {output}: {model.name}, streams {streams}; load it with {hint}")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
  """`--arg KEY=JSON` items as zoo factory arguments (a value that is not JSON stays a string)."""
  overrides = {}
  for item in items:
    key, _, value = item.partition("=")
    try:
      overrides[key] = json.loads(value)
    except json.JSONDecodeError:
      overrides[key] = value
  return overrides
