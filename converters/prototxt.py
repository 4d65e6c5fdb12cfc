"""A lenient reader of protobuf text format (Caffe `.prototxt`), without a schema.

Real Caffe files come from several incompatible `caffe.proto` dialects (BVLC,
yjxiong's action-recognition fork, C3D v1.0 and v1.1), so a strict,
schema-driven parse rejects most of them. This reader knows no schema: it
turns the text into nested `Msg` objects (field name -> list of values) and
leaves interpretation to the caller, so unknown fields and enum values never
stop a parse. It accepts what the text format allows: `#` comments, optional
`:` before a message, `{}` or `<>` message delimiters, `[a, b]` lists,
optional `,`/`;` separators, adjacent string concatenation, and C escapes.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from stviz_jax.models.checkpoint import ConversionError

_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?
               |[-+]?(?:inf|infinity|nan)\b)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}<>\[\]:,;])
""", re.VERBOSE | re.IGNORECASE)

_CLOSE = {"{": "}", "<": ">"}


class PrototxtError(ConversionError):
  """Malformed text (names file, line and column)."""


class Ident(str):
  """A bare identifier value (an enum name or true/false), as opposed to a "string"."""


class Msg:
  """A parsed message: field name -> values in file order (repeated fields keep all)."""

  def __init__(self, source: str = "", line: int = 0):
    self.items: list[tuple[str, Any]] = []
    self.source = source
    self.line = line

  def add(self, key: str, value: Any) -> None:
    self.items.append((key, value))

  def all(self, key: str) -> list:
    return [v for k, v in self.items if k == key]

  def has(self, key: str) -> bool:
    return any(k == key for k, _ in self.items)

  def get(self, key: str, default: Any = None) -> Any:
    """The last value of `key` (protobuf semantics for a repeated optional), or `default`."""
    vals = self.all(key)
    return vals[-1] if vals else default

  def get_int(self, key: str, default: Any = None) -> int:
    """`get` as an integer; a missing required field or a value of another
    type is one error naming the file, line and field."""
    v = self.get(key, default)
    if v is None:
      raise PrototxtError(f"{self.where()}: field {key!r} is required (an integer)")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
      raise PrototxtError(f"{self.where()}: field {key!r} should be an integer, got {v!r}")
    return int(v)

  def all_ints(self, key: str) -> list[int]:
    """Every value of the repeated field `key`, each checked as in `get_int`."""
    vals = self.all(key)
    for v in vals:
      if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
        raise PrototxtError(f"{self.where()}: field {key!r} should hold integers, got {v!r}")
    return [int(v) for v in vals]

  def get_float(self, key: str, default: Any = None) -> float:
    """`get` as a number (see `get_int`)."""
    v = self.get(key, default)
    if v is None:
      raise PrototxtError(f"{self.where()}: field {key!r} is required (a number)")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      raise PrototxtError(f"{self.where()}: field {key!r} should be a number, got {v!r}")
    return float(v)

  def msg(self, key: str) -> "Msg":
    """The sub-message `key` (an empty one when absent, so defaults apply)."""
    v = self.get(key)
    if v is None:
      return Msg(self.source, self.line)
    if not isinstance(v, Msg):
      raise PrototxtError(f"{self.where()}: field {key!r} should be a message, got {v!r}")
    return v

  def keys(self) -> list[str]:
    return list(dict.fromkeys(k for k, _ in self.items))

  def where(self) -> str:
    return f"{self.source}:{self.line}"

  def __repr__(self) -> str:
    return f"Msg({', '.join(self.keys())})"


def parse(text: str, source: str = "<string>") -> Msg:
  """Parses protobuf text into a `Msg` tree.

  Args:
    text: the file's contents.
    source: its name, for error messages.

  Returns:
    The top-level message.
  """
  tokens = list(_tokenize(text, source))
  parser = _Parser(tokens, source)
  root = Msg(source, 1)
  parser.fields(root, None)
  return root


def parse_file(path: str) -> Msg:
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      text = f.read()
  except OSError as e:
    raise PrototxtError(f"{path}: cannot read: {e.strerror}") from None
  return parse(text, str(path))


def _tokenize(text: str, source: str) -> Iterator[tuple[str, str, int, int]]:
  pos, line, line_start = 0, 1, 0
  n = len(text)
  while pos < n:
    m = _TOKEN.match(text, pos)
    if not m:
      raise PrototxtError(f"{source}:{line}:{pos - line_start + 1}: unexpected "
                          f"character {text[pos]!r}")
    kind = m.lastgroup
    value = m.group(kind)
    if kind != "ws":
      yield kind, value, line, pos - line_start + 1
    newlines = value.count("\n")
    if newlines:
      line += newlines
      line_start = m.start() + value.rfind("\n") + 1
    pos = m.end()


class _Parser:

  def __init__(self, tokens, source):
    self.tokens = tokens
    self.i = 0
    self.source = source

  def peek(self):
    return self.tokens[self.i] if self.i < len(self.tokens) else None

  def error(self, what: str, tok=None):
    tok = tok or self.peek()
    if tok is None:
      last = self.tokens[-1] if self.tokens else ("", "", 1, 1)
      return PrototxtError(f"{self.source}:{last[2]}: {what}, but the file ends "
                           "(truncated?)")
    return PrototxtError(f"{self.source}:{tok[2]}:{tok[3]}: {what}, got {tok[1]!r}")

  def take(self):
    tok = self.peek()
    self.i += 1
    return tok

  def fields(self, msg: Msg, close: str | None) -> None:
    while True:
      tok = self.peek()
      if tok is None:
        if close is not None:
          raise self.error(f"expected {close!r} to close the message")
        return
      kind, value = tok[0], tok[1]
      if kind == "punct" and value == close:
        self.take()
        return
      if kind == "punct" and value in ",;":
        self.take()
        continue
      if kind not in ("ident",):
        raise self.error("expected a field name")
      self.take()
      key, line = value, tok[2]
      nxt = self.peek()
      colon = nxt is not None and nxt[0] == "punct" and nxt[1] == ":"
      if colon:
        self.take()
        nxt = self.peek()
      if nxt is not None and nxt[0] == "punct" and nxt[1] in _CLOSE:
        self.take()
        sub = Msg(self.source, line)
        self.fields(sub, _CLOSE[nxt[1]])
        msg.add(key, sub)
      elif nxt is not None and nxt[0] == "punct" and nxt[1] == "[":
        self.take()
        for v in self.list_values(line):
          msg.add(key, v)
      elif colon:
        msg.add(key, self.scalar())
      else:
        raise self.error(f"expected ':' or '{{' after field {key!r}")

  def list_values(self, line: int) -> list:
    out = []
    while True:
      tok = self.peek()
      if tok is None:
        raise self.error("expected ']' to close the list")
      if tok[0] == "punct" and tok[1] == "]":
        self.take()
        return out
      if tok[0] == "punct" and tok[1] == ",":
        self.take()
        continue
      if tok[0] == "punct" and tok[1] in _CLOSE:
        self.take()
        sub = Msg(self.source, tok[2])
        self.fields(sub, _CLOSE[tok[1]])
        out.append(sub)
      else:
        out.append(self.scalar())

  def scalar(self):
    tok = self.take()
    if tok is None:
      raise self.error("expected a value")
    kind, value = tok[0], tok[1]
    if kind == "string":
      parts = [_unescape(value[1:-1])]
      while self.peek() is not None and self.peek()[0] == "string":
        parts.append(_unescape(self.take()[1][1:-1]))
      return "".join(parts)
    if kind == "number":
      return _number(value)
    if kind == "ident":
      return Ident(value)
    raise self.error("expected a value", tok)


def _number(text: str):
  low = text.lower().lstrip("+-")
  if low in ("inf", "infinity", "nan"):
    return float(text)
  if low.startswith("0x"):
    return int(text, 16)
  t = text[:-1] if text[-1] in "fF" else text
  if re.fullmatch(r"[-+]?\d+", t):
    return int(t)
  return float(t)


def _unescape(s: str) -> str:
  if "\\" not in s:
    return s
  return s.encode("latin-1", "backslashreplace").decode("unicode_escape")
