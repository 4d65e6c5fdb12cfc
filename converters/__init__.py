"""Weight converters: PyTorch, Caffe, MatConvNet and I3D weights into Flax variables."""
