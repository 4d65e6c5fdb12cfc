"""Two class units side by side (the paper's Figs. 13-15): `Comparison`,
the run's class names, and the `--compare` parser."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping, Sequence


from stviz_jax import layout
from stviz_jax.gallery.runs import LOGITS, LayerRuns, read_json


@dataclasses.dataclass
class Comparison:
  """Class units A and B side by side, with the class_contrast results of the pair.

  `a_layer` / `b_layer`: the class_logit target holding each (None: not run);
  `contrasts`: (heading, class_contrast target, its unit) for A - B and B - A.
  """

  a: int
  b: int
  names: tuple[str, str]
  a_layer: LayerRuns | None
  b_layer: LayerRuns | None
  contrasts: list[tuple[str, LayerRuns, int]]

  @property
  def file(self) -> str:
    return f"class_{self.a:04d}_vs_{self.b:04d}.html"

  @property
  def title(self) -> str:
    return f"{self.names[0]} vs {self.names[1]}"

  def shows(self, layer: LayerRuns, unit: int) -> bool:
    """Whether the page shows `unit` of `layer`."""
    return any(l is layer and u == unit for _, l, u in self.groups())

  def groups(self) -> list[tuple[str, LayerRuns | None, int]]:
    """(heading, target, unit) of each column group: A, B, then the contrasts."""
    return ([(f"{self.names[0]} (class {self.a})", self.a_layer, self.a),
             (f"{self.names[1]} (class {self.b})", self.b_layer, self.b)]
            + [(f"{h} (class contrast)", l, u) for h, l, u in self.contrasts])


def class_names(workdir: str) -> dict[int, str]:
  """Class index -> name for the classes a job's `summary.json` names."""
  summary = read_json(os.path.join(workdir, layout.SUMMARY_FILE)) or {}
  names = {}
  for t in (summary.get("targets") or {}).values():
    names.update({int(u): str(n) for u, n in (t.get("class_names") or {}).items()})
  for c in summary.get("comparisons") or ():
    names.update({int(c["a"]): str(c["names"][0]), int(c["b"]): str(c["names"][1])})
  return names


def parse_compare(spec: str | Sequence, names: Mapping[int, str]) -> list[tuple[int, int]]:
  """'A:B; C:D' (class names of the run or indices; ',' also separates) -> pairs.

  Raises:
    ValueError: one line naming the malformed pair or unknown class, with a
      few of the run's class names.
  """
  pairs = ([p.strip() for p in re.split(r"[;,]", spec) if p.strip()]
           if isinstance(spec, str) else list(spec))
  index = {n: u for u, n in names.items()}
  out = []
  for pair in pairs:
    sides = pair.split(":") if isinstance(pair, str) else list(pair)
    if len(sides) != 2:
      raise ValueError(f"compare: {pair!r} is not a pair 'A:B' (pairs separated by ';')")
    ab = []
    for side in sides:
      side = str(side).strip()
      if re.fullmatch(r"\d+", side):
        ab.append(int(side))
      elif side in index:
        ab.append(index[side])
      else:
        known = [f"{n!r} ({u})" for u, n in sorted(names.items())]
        raise ValueError(f"compare: unknown class {side!r}; classes of this run: "
                         + (", ".join(known[:5]) + (f" and {len(known) - 5} more"
                                                    if len(known) > 5 else "")
                            if known else "none named (use indices)"))
    out.append((ab[0], ab[1]))
  return out


def comparisons(layers: Sequence[LayerRuns], pairs: Sequence[tuple[int, int]] = (),
                names: Mapping[int, str] | None = None) -> list[Comparison]:
  """The comparison pages: `pairs`, then unit A of every class_contrast target
  against its class B (each unordered pair once).

  A pair's classes are looked up in the class_logit targets on 'logits' (the
  first holding each); its contrasts are the class_contrast targets of A
  against B and of B against A.
  """
  names = dict(names or {})
  label = lambda u: names.get(u, f"class {u}")
  classes = [l for l in layers if l.layer == LOGITS and l.kind == "class_logit"]
  contrasts = []
  for l in layers:
    other = l.runs[0].objective().get("other")
    if l.layer == LOGITS and l.kind == "class_contrast" and isinstance(other, int) and other >= 0:
      contrasts.append((l, other))
  wanted = [(int(a), int(b)) for a, b in pairs]
  wanted += [(u, other) for l, other in contrasts for u in l.units if u != other]
  out, seen = [], set()
  for a, b in wanted:
    if frozenset((a, b)) in seen:
      continue
    seen.add(frozenset((a, b)))
    holder = lambda u: next((l for l in classes if u in l.units), None)
    cons = [(f"{label(x)} − {label(y)}", l, x) for x, y in ((a, b), (b, a))
            for l, other in contrasts if other == y and x in l.units]
    out.append(Comparison(a, b, (label(a), label(b)), holder(a), holder(b), cons))
  return out
