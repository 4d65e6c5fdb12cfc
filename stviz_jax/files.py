"""Atomic file writes that honour the umask (the one helper every writer
uses), and the one reader of `.npz`/`.npy` files whose errors name the file.

A file is written under a temporary name in its destination folder and renamed
into place, so a reader (or a rerun after a kill) sees the old file or the new
one, never half of one. `tempfile.mkstemp` creates its file 0600 whatever the
umask; the file is given the mode a plain `open(path, 'w')` would have
(0666 & ~umask) before the rename, so a shared gallery stays readable.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from typing import Iterator

TMP_PREFIX = ".tmp_"


def umask() -> int:
  """The process umask (read without changing it for good)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def default_mode() -> int:
  """What `open(path, 'w')` would give a new file: 0666 & ~umask."""
  return 0o666 & ~umask()


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`; on success it becomes `path`.

  The temporary file keeps `path`'s extension (writers such as imageio pick
  the format from it) and starts with `TMP_PREFIX`. On any error, including
  KeyboardInterrupt, it is removed and `path` is left as it was.
  """
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=TMP_PREFIX, suffix=os.path.splitext(path)[1])
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, default_mode())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


# What `atomic_path` names its temporary files: mkstemp's 8 characters after
# TMP_PREFIX, then the destination's extension.
_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")


def remove_stale_temps(root: str) -> list[str]:
  """Removes the temporary files `atomic_path` left under `root` (a kill between
  their creation and the rename); returns their paths.

  Only regular files named exactly as `atomic_path` names them are removed;
  call it at the start of a run, when no writer of this run is active.
  """
  removed = []
  for d, _, names in os.walk(root):
    for n in names:
      p = os.path.join(d, n)
      if _TMP_NAME.match(n) and os.path.isfile(p) and not os.path.islink(p):
        with contextlib.suppress(FileNotFoundError):
          os.remove(p)
          removed.append(p)
  return removed


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)


def write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  write_bytes(path, text.encode("utf-8"))


def savez(path: str, arrays) -> None:
  """`np.savez(path, **arrays)` atomically (no '.npz' appended)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)


def load_npz(path: str):
  """`np.load(path)` without pickles: an `NpzFile` (a context manager) for an
  `.npz`, an array for an `.npy`.

  A missing, truncated or foreign file raises one error that names `path`
  (numpy's own say neither which file nor what to do).
  """
  import zipfile  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path}: not a readable numpy file ({type(e).__name__}: {e}); it may be "
                     "truncated by an interrupted copy or write: recreate it") from e
