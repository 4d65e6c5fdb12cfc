"""How many (unit, setting) elements one compiled call optimises: the chunk size.

`config.chunk_size` > 0 is taken as given; 0 means automatic. With
`config.sweep.memory_budget_gb` the chunk is what fits that budget by XLA's
memory analysis of one element; otherwise `auto_chunk_size` chooses per
backend. `Visualizer.run` and `sweep.run_sweep` both plan through here, so a
user never gets the slower mode by default. `vis` is a `stviz_jax.Visualizer`
(only its `lower_element` is used: this module imports neither it nor the sweep).
"""

from __future__ import annotations

from absl import logging
import jax

FALLBACK_CHUNK = 32  # per device, when an accelerator's memory is unknown.


def element_memory_bytes(vis) -> int | None:
  """Device memory one (unit, setting) element needs, from XLA's memory analysis.

  This counts what a call holds once for all its elements as well (on CPU
  the rewritten kernels of `models.conv`), so chunks planned from it are
  conservative; `marginal_element_memory_bytes` leaves that out.
  """
  return _call_memory_bytes(vis, 1)


def marginal_element_memory_bytes(vis) -> int | None:
  """Device memory each further element of a chunk adds: XLA's memory
  analysis of a chunk of two minus that of a chunk of one."""
  one, two = _call_memory_bytes(vis, 1), _call_memory_bytes(vis, 2)
  return max(two - one, 1) if one and two else None


def _call_memory_bytes(vis, elements: int) -> int | None:
  try:
    mem = vis.lower_element(elements).compile().memory_analysis()
    if mem is None:
      return None
    # Temporaries and outputs (the per-element state) grow with the chunk; the
    # weights are shared by all elements (and pruned to what the layer uses).
    total = mem.temp_size_in_bytes + mem.output_size_in_bytes
    return max(int(total), 1)
  except Exception as e:  # memory analysis is best effort on some backends.
    logging.warning("memory analysis unavailable (%s); chunk size %d", e, FALLBACK_CHUNK)
    return None


# Share of an accelerator's memory the automatic chunk may fill (the weights,
# XLA's workspace and fragmentation take the rest).
AUTO_MEMORY_FRACTION = 0.5


def auto_chunk_size(backend: str, n_devices: int = 1, per_element_bytes: int | None = None,
                    device_bytes: int | None = None) -> int:
  """The chunk when `config.chunk_size == 0` and no memory budget is given.

  CPU: one element per device at a time. On the 2-core CPU a vmapped chunk
  ran at 0.55x a loop of single units for VGG-16 and 1.04x (noise) for I3D
  (`benchmarks/README.md`), and one element needs a chunk's memory only once.
  Accelerators: vmapping is the point (the units fill the device), so as many
  as fit `AUTO_MEMORY_FRACTION` of a device's memory by XLA's memory analysis
  of one element, times the devices; `FALLBACK_CHUNK` per device when
  either figure is unknown.
  """
  if backend == "cpu":
    return n_devices
  if per_element_bytes and device_bytes:
    return max(1, int(AUTO_MEMORY_FRACTION * device_bytes // per_element_bytes)) * n_devices
  return FALLBACK_CHUNK * n_devices


def device_bytes() -> int | None:
  """Memory of the first device (`bytes_limit` of its memory stats), if it reports it."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # not every backend implements memory_stats.
    return None
  return stats.get("bytes_limit")


def plan_chunk_size(vis, n_elements: int, n_devices: int,
                    chunk_size: int = 0, memory_budget_gb: float = 0.0) -> int:
  """Elements per chunk: given, the most that fit the memory budget per device,
  or (neither given) `auto_chunk_size` for the backend.

  The result is a multiple of `n_devices` and at most `n_elements` rounded up
  to one.
  """
  if chunk_size <= 0:
    per_element = element_memory_bytes(vis) if memory_budget_gb > 0 else None
    if per_element:
      chunk_size = max(1, int(memory_budget_gb * 2**30 // per_element)) * n_devices
      logging.info("chunk size %d from %.2f GB per device / %.1f MB per element",
                   chunk_size, memory_budget_gb, per_element / 2**20)
    elif jax.default_backend() == "cpu":
      chunk_size = auto_chunk_size("cpu", n_devices)
    elif n_elements <= n_devices:
      chunk_size = n_elements  # one element per device: no memory analysis needed
    else:
      chunk_size = auto_chunk_size(jax.default_backend(), n_devices,
                                   element_memory_bytes(vis), device_bytes())
      logging.info("chunk size %d (automatic for %s)", chunk_size, jax.default_backend())
  chunk_size = min(chunk_size, n_elements)
  return -(-chunk_size // n_devices) * n_devices
