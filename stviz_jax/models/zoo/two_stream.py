"""Two-stream layer graphs: the appearance (RGB) and motion (optical flow) streams.

`late_fusion` puts one tower per stream side by side and sums their class
scores with weights (Simonyan & Zisserman; TSN); `fusion_streams` gives the
inputs of a network that fuses its towers inside (Feichtenhofer et al.): T
RGB frames, and T flow stacks of `flow_stack` frames every `flow_stride`.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from stviz_jax.models.netgraph import Graph, Node, StreamInput, top
from stviz_jax.models.specs import StreamSpec

STREAMS = ("rgb", "flow")


def late_fusion(name: str, streams: Sequence[str], tower: Callable[[str], Sequence[Node]],
                classifier: Callable[[str], str], specs: Mapping[str, StreamSpec],
                logit_weights: Sequence[float] | None,
                default_weights: Mapping[str, float], bn_eps: float = 1e-5) -> Graph:
  """One tower per stream of `streams`, their class scores summed with weights.

  Args:
    name: the architecture's name (in errors, and checked against weights).
    streams: towers to build, a subset of ("rgb", "flow").
    tower: `tower(stream)`, the stream's layers, reading blob `<stream>/data`.
    classifier: `classifier(stream)`, the blob of the stream's class scores.
    specs: per stream, its input (a flow input's frames are the stack).
    logit_weights: per built tower, its weight in `logits`; None = `default_weights`.
    default_weights: per stream, the published weight.
    bn_eps: epsilon of the towers' batch norms.
  """
  streams = tuple(streams)
  if not streams or any(s not in STREAMS for s in streams):
    raise ValueError(f"{name}: streams {streams} invalid; choose from {STREAMS}")
  nodes, taps, logits, inputs = [], [], [], []
  for s in streams:
    layers = tuple(tower(s))
    nodes += layers
    taps += [top(n) for n in layers]
    logits.append(classifier(s))
    inputs.append(StreamInput(s, f"{s}/data", 1, specs[s].frames if s == "flow" else 0,
                              bgr=s == "rgb"))
  return Graph(name, nodes=tuple(nodes), taps=tuple(taps), logits=tuple(logits),
               streams={s: specs[s] for s in streams}, inputs=tuple(inputs),
               logit_weights=tuple(logit_weights or [default_weights[s] for s in streams]),
               bn_eps=bn_eps)


def fusion_streams(frames: int, size: int, flow_stack: int, flow_stride: int,
                   pixels: tuple[float, float]
                   ) -> tuple[dict[str, StreamSpec], tuple[StreamInput, ...]]:
  """The inputs of a fusion network: `(specs, inputs)` of T frames and T flow stacks."""
  specs = {"rgb": StreamSpec(frames, size, size, 3, pixels),
           "flow": StreamSpec((frames - 1) * flow_stride + flow_stack, size, size, 2, pixels)}
  inputs = (StreamInput("rgb", "rgb/data", frames),
            StreamInput("flow", "flow/data", frames, flow_stack, flow_stride))
  return specs, inputs
