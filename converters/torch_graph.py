"""Any PyTorch network (a module path and its arguments) into a weights directory.

    python -m converters.torch_graph --model torchvision.models.video.r2plus1d_18 \\
        --kwargs '{"num_classes": 400}' --weights r2plus1d.pth --out /tmp/r2plus1d \\
        --stream rgb --input 3,8,112,112 --value-range=-1.9,2.9

then `stviz_jax.models.load("converted", weights="/tmp/r2plus1d")`, or in the
main job `--config.model=converted --config.weights=/tmp/r2plus1d`. Two
converted towers (one `--stream rgb`, one `--stream flow`) become one
late-fusion two-stream directory with

    python -m converters.torch_graph --towers /tmp/rgb,/tmp/flow --out /tmp/two \
        --logit-weights 1,1.5 [--fusion layer4]

The module is built by calling `--model` with `--kwargs`, its state dict is
read from `--weights` (`.pth` via `torch.load(weights_only=True)` or
`.safetensors`, `converters.pytorch.load_state_dict`) and loaded strictly
(every name and shape, or one error listing what is missing, unexpected or
mis-shaped); without `--weights` it keeps its random initialisation from
`--seed`. It is then traced and mapped by `stviz_jax.models.torch_graph` (the
library part, importable without `converters`, so `stviz_jax.models.from_torch`
works from Python) and the graph plus weights are written atomically
(`stviz_jax.models.converted.save`): nothing is written if any step fails,
and a non-empty directory that is not a previous conversion is never replaced
without `--overwrite`.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any, Sequence

from converters import common, pytorch
from stviz_jax import cli
from stviz_jax.models import checkpoint, converted, torch_graph


class TorchModelError(common.ConversionError):
  """A `--model` that cannot be imported or built, or `--weights` that do not fit it."""


def build_module(path: str, kwargs: dict[str, Any]):
  """Calls the factory or class at dotted `path` (`torchvision.models.video.r3d_18`)."""
  module_name, _, attr = path.rpartition(".")
  try:
    factory = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError, ValueError) as e:
    raise TorchModelError(f"--model {path}: cannot import it ({type(e).__name__}: {e}); "
                          "give a dotted path to a module class or factory") from None
  try:
    return factory(**kwargs)
  except TypeError as e:
    raise TorchModelError(f"--model {path} --kwargs {json.dumps(kwargs)}: {e}") from None


def load_weights(module, path: str) -> None:
  """Loads the state dict at `path` into `module`, every name and shape checked."""
  import torch  # pylint: disable=import-outside-toplevel
  state = pytorch.load_state_dict(path)
  want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
  common.check_complete(
      path, missing=[k for k in want if k not in state],
      unexpected=[k for k in state if k not in want],
      mismatched=[f"{k} {tuple(state[k].shape)} vs expected {want[k]}"
                  for k in want if k in state and tuple(state[k].shape) != want[k]])
  module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()},
                         strict=True)


def _ints(text: str, flag: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in text.split(","))
  except ValueError:
    raise cli.UsageError(f"{flag} {text!r}: expected comma-separated integers, "
                         "e.g. 3,8,112,112") from None


def convert(model: str, out: str, *, kwargs: dict | None = None, weights: str | None = None,
            stream: str = "rgb", input_shape: Sequence[int] = (3, 8, 112, 112),
            value_range: Sequence[float] = (-1.0, 1.0), ignore: Sequence[str] = (),
            seed: int = 0, overwrite: bool = False):
  """Builds, converts and saves; returns the converted `Model` (see module docstring)."""
  import torch  # pylint: disable=import-outside-toplevel
  kwargs = dict(kwargs or {})
  checkpoint.check_output(out, overwrite=overwrite, inputs=[weights] if weights else [])
  torch.manual_seed(seed)
  module = build_module(model, kwargs)
  if weights:
    load_weights(module, weights)
  example = torch.zeros((1,) + tuple(input_shape))
  m = torch_graph.from_torch(module, example, stream, tuple(value_range),
                             name=model.rpartition(".")[2], ignore=ignore)
  metadata = {"format": "torch_graph", "torch_model": model, "kwargs": kwargs,
              "input": list(input_shape), "stream": stream, "ignore": list(ignore),
              "source": os.path.abspath(weights) if weights else None,
              "source_sha256": checkpoint.sha256(weights) if weights else None,
              "seed": None if weights else seed}
  converted.save(out, m, metadata, overwrite=overwrite,
                 inputs=[weights] if weights else [])
  return m


def fuse(towers: Sequence[str], out: str, *, logit_weights: Sequence[float] = (1.0, 1.5),
         fusion: str | None = None, overwrite: bool = False):
  """Saves the two-stream model of two converted tower directories (appearance first)."""
  if len(towers) != 2:
    raise cli.UsageError(f"--towers {','.join(towers)}: give two weights directories, "
                         "the appearance (rgb) tower's and the motion (flow) tower's")
  checkpoint.check_output(out, overwrite=overwrite, inputs=towers)
  a, m = (converted.load(t) for t in towers)
  both = converted.two_stream(a, m, logit_weights=logit_weights, fusion=fusion,
                              name=f"{a.name}+{m.name}")
  converted.save(out, both, {"format": "torch_graph_two_stream",
                             "towers": [os.path.abspath(t) for t in towers],
                             "logit_weights": list(logit_weights), "fusion": fusion},
                 overwrite=overwrite, inputs=towers)
  return both


def _floats(text: str, flag: str, n: int) -> tuple[float, ...]:
  try:
    values = tuple(float(v) for v in text.split(","))
  except ValueError:
    values = ()
  if len(values) != n:
    raise cli.UsageError(f"{flag} {text!r}: expected {n} comma-separated numbers")
  return values


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
  parser = cli.ArgumentParser(
      prog="python -m converters.torch_graph",
      description="Trace a PyTorch network (torch.fx) and write its graph and weights "
                  "as a stviz_jax weights directory (model 'converted').")
  parser.add_argument("--model", help="dotted path of the module class or factory, e.g. "
                                      "torchvision.models.video.r2plus1d_18")
  parser.add_argument("--towers", metavar="RGB_DIR,FLOW_DIR",
                      help="instead of --model: fuse two converted towers into one "
                           "two-stream directory (late fusion)")
  parser.add_argument("--logit-weights", default="1,1.5",
                      help="with --towers: weights of the two towers' class scores")
  parser.add_argument("--fusion", default=None, metavar="LAYER",
                      help="with --towers: a layer of both towers whose sum the appearance "
                           "tower continues from")
  parser.add_argument("--kwargs", default="{}", help="its arguments as a JSON object")
  parser.add_argument("--weights", default=None,
                      help=".pth/.pt or .safetensors state dict (default: random init)")
  parser.add_argument("--out", required=True, help="weights directory to write")
  parser.add_argument("--stream", default="rgb", choices=["rgb", "flow"])
  parser.add_argument("--input", default="3,8,112,112",
                      help="PyTorch input shape without the batch: C,T,H,W (3-D nets) or "
                           "C,H,W (2-D towers)")
  parser.add_argument("--value-range", default="-1,1",
                      help="range of the preprocessed input, LO,HI (e.g. --value-range=-1.9,2.9)")
  parser.add_argument("--ignore", action="append", default=[], metavar="PREFIX",
                      help="drop the parameters of submodules under PREFIX that the traced "
                           "forward never calls (e.g. AuxLogits. of inception_v3)")
  parser.add_argument("--seed", type=int, default=0, help="random init without --weights")
  common.add_output_flags(parser)
  args = parser.parse_args(argv)
  if bool(args.model) == bool(args.towers):
    raise cli.UsageError("give --model (convert a network) or --towers (fuse two "
                         "converted towers), not both or neither")
  if args.towers:
    m = fuse(args.towers.split(","), args.out,
             logit_weights=_floats(args.logit_weights, "--logit-weights", 2),
             fusion=args.fusion, overwrite=args.overwrite)
    common.report_written(args.out, m, f"stviz_jax.models.load('converted', "
                                       f"weights={args.out!r})")
    return 0
  try:
    kwargs = json.loads(args.kwargs)
  except json.JSONDecodeError as e:
    raise cli.UsageError(f"--kwargs {args.kwargs!r}: not JSON ({e})") from None
  if not isinstance(kwargs, dict):
    raise cli.UsageError(f"--kwargs {args.kwargs!r}: expected a JSON object")
  value_range = _floats(args.value_range, "--value-range", 2)
  m = convert(args.model, args.out, kwargs=kwargs, weights=args.weights,
              stream=args.stream, input_shape=_ints(args.input, "--input"),
              value_range=value_range, ignore=args.ignore, seed=args.seed,
              overwrite=args.overwrite)
  common.report_written(args.out, m, f"stviz_jax.models.load('converted', "
                                     f"weights={args.out!r})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
