r"""The main job on a PyTorch network converted with torch.fx (model 'converted').

Commands (torchvision's R(2+1)D-18; `--weights` is a .pth or .safetensors state
dict, without it the network keeps a random initialisation):
  python -m converters.torch_graph --model torchvision.models.video.r2plus1d_18 \
      --kwargs '{"num_classes": 400}' --weights r2plus1d_18.pth --out /tmp/r2plus1d \
      --stream rgb --input 3,8,112,112 --value-range=-1.9,2.9
  python -m stviz_jax.main --config=configs/torch_graph.py:/tmp/r2plus1d \
      --workdir=/tmp/r2plus1d_vis

The argument after ':' is the weights directory (`--config.weights=DIR` does
the same). Layers are the PyTorch module paths (`python -m stviz_jax.models
--describe converted --set weights=/tmp/r2plus1d --no-rf` lists them); the
default target is four channels of `layer3` (a residual stage's output) under
temporal regularisation gamma in {0, 1, 10}; override with
`--config.layer=layer4 --config.units=0-7`. `--value-range` is the range of
the input the PyTorch model was trained on (torchvision's video models:
Kinetics mean/std normalised pixels, about [-1.9, 2.9]); the regulariser bounds
scale with it.

`configs/torch_graph.py:DIR,quick` runs 4 steps (used by the tests).
"""

from stviz_jax.config import default_config


def get_config(arg=None):
  weights, _, variant = (arg or "").partition(",")
  config = default_config()
  config.model = "converted"
  config.weights = weights
  config.layer = "layer3"
  config.units = "0-3"
  config.gammas = (0.0, 1.0, 10.0)
  if variant == "quick":
    config.steps = 4
    config.gammas = (0.0,)
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; valid: quick (as DIR,quick)")
  return config
