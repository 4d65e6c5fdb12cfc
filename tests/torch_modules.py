"""Small hand-written PyTorch networks for the torch.fx converter's tests (and its
command line, which imports them by dotted path: `torch_modules.Branchy`)."""

import torch
from torch import nn
import torch.nn.functional as F


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
  """He-normal kernels, small random biases and batch-norm statistics, eval mode.

  Random but O(1) activations all the way to the logits (torchvision's own
  init makes S3D's outputs nearly constant), so a comparison tests every layer.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
      elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        c = m.num_features
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        if m.affine:
          m.weight.copy_(torch.rand(c, generator=g) + 0.5)
          m.bias.copy_(torch.randn(c, generator=g) * 0.2)
  return module.eval()


class Branchy(nn.Module):
  """A 3-D net on `(N, 3, 4, 16, 16)`: branches, concatenation, residual adds,
  functional ops, grouped/dilated/'same' convolutions, ceil-mode pools, a batch
  norm after a non-convolution and a Linear over a `C x T x H x W` flatten."""

  def __init__(self, in_channels: int = 3, num_classes: int = 5):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv3d(in_channels, 8, 3, padding=1, bias=False),
                              nn.BatchNorm3d(8), nn.ReLU(inplace=True))
    self.a = nn.Conv3d(8, 8, (1, 3, 3), padding=(0, 1, 1))
    self.b = nn.Conv3d(8, 4, 3, padding="same", dilation=2, groups=2)
    self.pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), ceil_mode=True)
    self.bn = nn.BatchNorm3d(12)
    self.act = nn.Hardswish()
    self.avg = nn.AvgPool3d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    self.drop = nn.Dropout(0.5)
    self.fc = nn.Linear(12 * 3 * 5 * 5, num_classes)

  def forward(self, x):
    x = self.stem(x)
    y = F.relu(self.a(x)) + x
    y = torch.cat([y, self.b(x)], 1)
    y = self.bn(self.pool(y))
    z = F.gelu(y) * torch.sigmoid(y)
    z = self.act(z - 0.5 * y) / 2.0
    z = self.avg(z)
    return self.fc(self.drop(z.view(z.size(0), -1)))


class MeanHead(nn.Module):
  """A 3-D net ending in `x.mean((2, 3, 4))` and a Linear on `(N, C)`, with
  LeakyReLU, SiLU, ReLU6, Tanh, adaptive pooling to a divisor and a softmax."""

  def __init__(self, in_channels: int = 3, num_classes: int = 4):
    super().__init__()
    self.conv1 = nn.Conv3d(in_channels, 6, (3, 3, 3), stride=(1, 2, 2), padding=1)
    self.bn1 = nn.BatchNorm3d(6)
    self.conv2 = nn.Conv3d(6, 6, 1)
    self.pool = nn.AdaptiveAvgPool3d((2, 4, 4))
    self.fc = nn.Linear(6, num_classes)
    self.softmax = nn.Softmax(dim=1)

  def forward(self, x):
    x = F.leaky_relu(self.bn1(self.conv1(x)), 0.2)
    x = F.silu(self.conv2(x)) + torch.tanh(x)
    x = F.relu6(self.pool(x) * 3.0)
    x = F.max_pool3d(x, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    return self.softmax(self.fc(x.mean((2, 3, 4))))


class Tower2d(nn.Module):
  """A 2-D tower `(N, C, 16, 16)` -> `(N, K)` with a residual block."""

  def __init__(self, in_channels: int = 3, num_classes: int = 5):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(8)
    self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    self.pool = nn.AvgPool2d(2)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(8, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.pool(self.block(x) + x)
    return self.fc(torch.flatten(self.avgpool(x), 1))


class MoreOps(nn.Module):
  """Functional adaptive max pooling, builtin `sum`, scalar `add` with alpha, a
  mean over time feeding a Conv2d, `torch.sum(keepdim=True)`, a permute and a
  `reshape(x.shape[0], -1)` to `(N, C)`, tanh-GELU and a softmax."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv3d(3, 6, 3, padding=1)
    self.conv2d = nn.Conv2d(6, 6, 3, padding=1, groups=3)
    self.fc = nn.Linear(6, 6)
    self.gelu = nn.GELU(approximate="tanh")

  def forward(self, x):
    a = self.conv(x)
    b = F.adaptive_max_pool3d(a, (2, 4, 4))
    c = sum([b, b * 2.0, torch.add(b, 1.0, alpha=2)])
    t = self.conv2d(c.mean(2))
    s = torch.sum(t, dim=(2, 3), keepdim=True).permute(0, 2, 3, 1)
    v = s.reshape(s.shape[0], -1)
    return self.gelu(self.fc(v)) + F.softmax(v, dim=1)


class Gate(nn.Module):
  def forward(self, x):
    if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
      return x
    return -x


class Untraceable(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = nn.Conv3d(3, 4, 1)
    self.gate = Gate()

  def forward(self, x):
    return self.gate(self.conv(x)).mean((2, 3, 4))


class Upsampler(nn.Module):
  """Uses an op the converter does not map (`F.interpolate`)."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv3d(3, 4, 1)

  def forward(self, x):
    return F.interpolate(self.conv(x), scale_factor=2.0).mean((2, 3, 4))


class InPlaceAlias(nn.Module):
  """`F.relu(x, inplace=True)` and then `x` again: PyTorch adds relu(x) twice."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv3d(3, 4, 1)

  def forward(self, x):
    x = self.conv(x)
    y = F.relu(x, inplace=True)
    return (y + x).mean((2, 3, 4))


class Motion(nn.Module):
  """1x1 units over flow `(N, 2, T, H, W)`: unit 0 responds to rightward motion
  (+u), 1 leftward, 2 downward (+v), 3 upward; logits are their means."""

  def __init__(self):
    super().__init__()
    self.motion = nn.Conv3d(2, 4, 1, bias=False)
    with torch.no_grad():
      self.motion.weight.copy_(torch.tensor(
          [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]).reshape(4, 2, 1, 1, 1))
    self.avgpool = nn.AdaptiveAvgPool3d(1)

  def forward(self, x):
    return torch.flatten(self.avgpool(self.motion(x)), 1)
