"""Describe a registered model: layers, receptive fields, strides, output shapes.

    python -m stviz_jax.models --list
    python -m stviz_jax.models --describe vgg16_two_stream --set streams='("rgb",)'
    python -m stviz_jax.models --describe c3d --set width=0.0625 --no-rf

The table has one row per tap-able layer: its receptive field (T x H x W, in
input frames and pixels; `rho` is the spatial size used by the objective),
cumulative stride (T, H, W) and output shape `(T, H, W, C)` for one example.
Receptive fields are measured from the network (gradient support, see
`receptive_field.py`); with random weights of `width < 1` they are the same
and much cheaper to measure on a CPU. `--no-rf` prints shapes only.
"""

from __future__ import annotations

import ast
import fnmatch
import sys
from typing import Sequence

from stviz_jax import cli
from stviz_jax.models import registry


def _parse_overrides(items: Sequence[str]) -> dict:
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--set {item!r}: expected key=value (e.g. size=112)")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value  # a plain string, e.g. weights=/path
  return out


def describe(model, layers: Sequence[str] | None = None, rf: bool = True) -> str:
  """The layer table of `model` as text (see module docstring)."""
  spec = model.spec
  streams = ", ".join(f"{k} {s.shape}" for k, s in spec.streams.items())
  rows = [("layer", "rho", "RF (T x H x W)", "stride (T,H,W)", "output")]
  for layer in layers or spec.layers:
    shape = "x".join(str(d) for d in spec.feature_shape(layer))
    if rf:
      g = spec.geometry(layer)
      rows.append((layer, str(g.spatial_size), "x".join(map(str, g.size)),
                   ",".join(map(str, g.stride)), shape))
    else:
      rows.append((layer, "", "", "", shape))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = [f"{model.name}: inputs {streams}"]
  for i, r in enumerate(rows):
    lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                           for j, (c, w) in enumerate(zip(r, widths))).rstrip())
    if i == 0:
      lines.append("  ".join("-" * w for w in widths))
  return "\n".join(lines)


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
  parser = cli.ArgumentParser(
      prog="python -m stviz_jax.models", description=__doc__.split("\n")[0])
  parser.add_argument("--list", action="store_true", help="list registered models")
  parser.add_argument("--describe", metavar="NAME", help="model to describe")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="factory override, e.g. size=112, width=0.25, "
                           "streams='(\"rgb\",)' (repeatable)")
  parser.add_argument("--layers", default="*",
                      help="glob of layers to show (default all), e.g. 'rgb/conv*'")
  parser.add_argument("--no-rf", action="store_true",
                      help="skip measuring receptive fields (shapes only)")
  args = parser.parse_args(argv)
  if args.list or not args.describe:
    print("\n".join(registry.names()))
    return 0
  model = registry.load(args.describe, **_parse_overrides(args.set))
  layers = [l for l in model.spec.layers if fnmatch.fnmatchcase(l, args.layers)]
  if not layers:
    raise ValueError(f"no layer of {args.describe!r} matches {args.layers!r}; "
                     f"layers: {', '.join(model.spec.layers)}")
  print(describe(model, layers, rf=not args.no_rf), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
