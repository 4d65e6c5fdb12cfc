"""One place that turns exceptions into the one-line error of every command line.

Every entry point (`stviz_jax.main`, `.gallery`, `.stats`, `.classify`,
`.evolution`, `.train_synthetic`, `.models`, the converters) ends in one line
on stderr, `error: <what is wrong and what would be valid>`, and an exit code:

  * 2: bad input - a ValueError (unknown layer, unit, class, config field,
    out-of-range value), a missing, misplaced or unwritable file, a
    non-finite objective, a command-line usage error;
  * 1: any other failure (a bug, a full disk, ...);
  * 130: interrupted (Ctrl-C).

The traceback is printed (before that line) only with `--verbose` on the
command line or `STVIZ_VERBOSE=1` in the environment.

absl programs call `run_absl(main)` instead of `app.run(main)` (flag and
config-file errors included); argparse programs decorate their
`main(argv) -> int` with `entry_point` and build their parser with
`ArgumentParser` (usage errors in one line too).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import traceback
from typing import Callable, Sequence

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "STVIZ_VERBOSE"

BAD_INPUT = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
             IsADirectoryError, PermissionError, FloatingPointError)

_verbose = False


class UsageError(ValueError):
  """A command line that cannot be run as given (exit code 2)."""


def verbose() -> bool:
  """Whether tracebacks are wanted (`--verbose` seen, or `STVIZ_VERBOSE` set)."""
  return _verbose or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def strip_verbose(argv: Sequence[str]) -> list[str]:
  """`argv` without `--verbose` (remembered for `verbose()`)."""
  global _verbose
  argv = list(argv)
  if VERBOSE_FLAG in argv[1:]:
    _verbose = True
    argv = [argv[0]] + [a for a in argv[1:] if a != VERBOSE_FLAG]
  return argv


def exit_code(e: BaseException) -> int:
  if isinstance(e, KeyboardInterrupt):
    return 130
  if isinstance(e, BAD_INPUT) or _is_flags_error(e):
    return 2
  return 1


def _is_flags_error(e: BaseException) -> bool:
  try:
    from absl import app, flags  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  return isinstance(e, (flags.Error, app.UsageError))


def message(e: BaseException) -> str:
  """What went wrong, in one line."""
  if isinstance(e, KeyboardInterrupt):
    return "interrupted"
  if isinstance(e, OSError) and e.filename is not None and e.strerror:
    # '[Errno 2] No such file or directory: 'x'' -> "x: no such file or directory"
    text = f"{e.filename}: {e.strerror[0].lower()}{e.strerror[1:]}"
  elif isinstance(e, KeyError) and len(e.args) == 1:
    text = str(e.args[0])
  else:
    text = str(e)
  text = " ".join(line.strip() for line in text.splitlines() if line.strip())
  if not text:
    text = type(e).__name__
  elif exit_code(e) == 1:
    text = f"{type(e).__name__}: {text}"  # an unexpected failure: say what kind.
  return text


def report(e: BaseException) -> int:
  """Prints the error line (and the traceback if `verbose()`); returns the exit code."""
  if verbose():
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
  sys.stdout.flush()
  print(f"error: {message(e)}", file=sys.stderr, flush=True)
  return exit_code(e)


def entry_point(main: Callable[..., int | None]) -> Callable[..., int]:
  """Wraps `main(argv=None) -> int`: `--verbose` is taken out of argv, any
  exception becomes `report`'s line and exit code (returned, not raised, so
  tests can call `main([...])`)."""

  @functools.wraps(main)
  def wrapped(argv: Sequence[str] | None = None, *args, **kwargs) -> int:
    argv = strip_verbose(["prog"] + list(sys.argv[1:] if argv is None else argv))[1:]
    try:
      return main(argv, *args, **kwargs) or 0
    except SystemExit:
      raise
    except BaseException as e:  # pylint: disable=broad-except
      return report(e)

  return wrapped


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose usage errors are one `error:` line and exit code 2."""

  def error(self, message_: str):
    sys.stderr.write(f"error: {self.prog}: {message_} (see --help)\n")
    sys.exit(2)


def _config_error(e: BaseException, argv: Sequence[str]) -> str | None:
  """One line for an error raised while ml_collections parses a config flag."""
  chain, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
  texts = [str(x.args[0]) if isinstance(x, (KeyError, AttributeError)) and x.args
           else str(x) for x in chain]
  for text in texts:  # a misspelt field: ml_collections knows a close match.
    m = re.search(r"'([^']+)'\s*Did you mean \"([^\"]+)\"", text.replace("\\n", "\n").replace(
        "\\'", "'"), re.S)
    if m:
      name, guess = m.groups()
      flag = next((a.split("=")[0] for a in argv if re.match(
          rf"--\w+(\.\w+)*\.{re.escape(name)}(=|$)", a)), f"--config...{name}")
      return f"{flag}: no config field {name!r}; did you mean {guess!r}?"
  for x in chain:  # a field that does not exist at all (no close match).
    if isinstance(x, (KeyError, AttributeError)) and x.args:
      name = str(x.args[0]).strip("'\"")
      flag = next((a.split("=")[0] for a in argv if re.match(
          rf"--\w+(\.\w+)*\.{re.escape(name)}(=|$)", a)), None)
      if flag:
        return f"{flag}: no config field {name!r}"
  root = chain[-1]
  flag = next((a for a in argv if a.startswith("--config=")), None)
  if any("Failed loading config file" in t for t in texts):
    path = flag.split("=", 1)[1].split(":")[0] if flag else "the config file"
    return f"{path}: no such config file (or it does not load); give --config=configs/<exp>.py[:arg]"
  if root is not chain[0] and isinstance(root, BAD_INPUT):
    # A value that does not parse: name the override that carries it.
    for a in argv:
      if a.startswith("--config.") and "=" in a and f"'{a.split('=', 1)[1]}'" in str(root):
        return f"{a}: {message(root)}"
    return f"{flag}: {message(root)}" if flag else message(root)
  return None


def _absl_flags_parser(argv: Sequence[str]) -> list[str]:
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    rest = flags.FLAGS(list(argv))
    for name in flags.FLAGS:  # config files load lazily: fail here, before main runs.
      flag = flags.FLAGS[name]
      if type(flag).__name__ == "_ConfigFlag" and type(flag.value).__name__ == "_ErrorConfig":
        getattr(flag.value, "to_json")  # raises the load error.
    return rest
  except Exception as e:  # pylint: disable=broad-except
    if verbose():
      traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    line = _config_error(e, argv) or message(e)
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.exit(2)


def run_absl(main: Callable[[Sequence[str]], None]) -> None:
  """`absl.app.run(main)` with one-line errors for flags, config files and `main`."""
  from absl import app  # pylint: disable=import-outside-toplevel

  def guarded(argv):
    try:
      return main(argv)
    except SystemExit:
      raise
    except BaseException as e:  # pylint: disable=broad-except
      if "Failed loading config file" in str(e):  # config files load lazily.
        if verbose():
          traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        print(f"error: {_config_error(e, sys.argv)}", file=sys.stderr, flush=True)
        sys.exit(2)
      sys.exit(report(e))

  app.run(guarded, argv=strip_verbose(sys.argv), flags_parser=_absl_flags_parser)
