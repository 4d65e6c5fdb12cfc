"""A minimal reader of the protobuf binary wire format (no schema, no protoc).

A message is a sequence of `(field number, wire type, value)` records. This
module splits a byte string into those records and decodes the few scalar
encodings Caffe files use; the meaning of each field number lives with the
caller (`converters.caffe`). Unknown fields are simply records nobody asks
for, which is what lets one reader handle every Caffe dialect.

Every error names the file, the byte offset (absolute, in the file) and the
field path being read, e.g.
``lenet.caffemodel: truncated length-delimited field at byte 1724880
(NetParameter.layer[3] > BlobProto.data)``.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

from stviz_jax.models.checkpoint import ConversionError

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


class WireError(ConversionError):
  """A corrupt or truncated protobuf message."""


@dataclasses.dataclass(frozen=True)
class Field:
  """One record: `value` is an int (VARINT/I32/I64 raw bits) or a memoryview (LEN)."""

  number: int
  wire_type: int
  value: object
  offset: int  # absolute byte offset of the record's value in the file


class Message:
  """The records of one message, grouped by field number (order kept)."""

  def __init__(self, data: memoryview, base: int, source: str, path: str):
    self.source = source
    self.path = path
    self.base = base
    self.fields: dict[int, list[Field]] = {}
    for f in _records(data, base, source, path):
      self.fields.setdefault(f.number, []).append(f)

  def where(self, offset: int | None = None, field: str = "") -> str:
    at = self.base if offset is None else offset
    path = self.path + (f".{field}" if field else "")
    return f"{self.source}: at byte {at} ({path})"

  def has(self, number: int) -> bool:
    return number in self.fields

  def all(self, number: int) -> list[Field]:
    return self.fields.get(number, [])

  def messages(self, number: int, name: str) -> list["Message"]:
    """The embedded messages of repeated field `number`."""
    out = []
    for i, f in enumerate(self.all(number)):
      self._expect(f, LEN, name)
      out.append(Message(f.value, f.offset, self.source, f"{self.path}.{name}[{i}]"))
    return out

  def message(self, number: int, name: str) -> "Message | None":
    ms = self.messages(number, name)
    return ms[-1] if ms else None

  def string(self, number: int, name: str, default: str = "") -> str:
    fs = self.all(number)
    if not fs:
      return default
    f = fs[-1]
    self._expect(f, LEN, name)
    try:
      return bytes(f.value).decode("utf-8")
    except UnicodeDecodeError as e:
      raise WireError(f"{self.where(f.offset, name)}: not UTF-8 text: {e}") from None

  def strings(self, number: int, name: str) -> list[str]:
    out = []
    for f in self.all(number):
      self._expect(f, LEN, name)
      out.append(bytes(f.value).decode("utf-8", errors="replace"))
    return out

  def ints(self, number: int, name: str, signed: bool = True) -> list[int]:
    """Repeated integer field, packed or not (varint encoding)."""
    out = []
    for f in self.all(number):
      if f.wire_type == VARINT:
        out.append(_signed(f.value) if signed else f.value)
      elif f.wire_type == LEN:
        data, pos = f.value, 0
        while pos < len(data):
          v, pos = _varint(data, pos, f.offset, self.source, f"{self.path}.{name}")
          out.append(_signed(v) if signed else v)
      else:
        self._expect(f, VARINT, name)
    return out

  def int(self, number: int, name: str, default: int = 0) -> int:
    v = self.ints(number, name)
    return v[-1] if v else default

  def wire_type(self, number: int) -> int | None:
    fs = self.all(number)
    return fs[-1].wire_type if fs else None

  def floats(self, number: int, name: str, dtype=np.float32) -> np.ndarray:
    """Repeated float/double field, packed (LEN) or one record per value."""
    dtype = np.dtype(dtype).newbyteorder("<")
    fixed = I32 if dtype.itemsize == 4 else I64
    chunks = []
    for f in self.all(number):
      if f.wire_type == LEN:
        if len(f.value) % dtype.itemsize:
          raise WireError(f"{self.where(f.offset, name)}: packed {dtype.name} "
                          f"array of {len(f.value)} bytes is not a multiple of "
                          f"{dtype.itemsize} (truncated or corrupt)")
        chunks.append(np.frombuffer(f.value, dtype=dtype))
      elif f.wire_type == fixed:
        fmt = "<I" if fixed == I32 else "<Q"
        chunks.append(np.frombuffer(struct.pack(fmt, f.value), dtype=dtype))
      else:
        self._expect(f, LEN, name)
    if not chunks:
      return np.zeros((0,), np.dtype(dtype).newbyteorder("="))
    return np.concatenate(chunks).astype(np.dtype(dtype).newbyteorder("="))

  def _expect(self, f: Field, wire_type: int, name: str) -> None:
    if f.wire_type != wire_type:
      raise WireError(f"{self.where(f.offset, name)}: field {f.number} has wire "
                      f"type {f.wire_type}, expected {wire_type} (corrupt file "
                      "or not this kind of message)")


def parse(data: bytes | memoryview, source: str, root: str) -> Message:
  """Splits a whole file's bytes into the records of its top message `root`."""
  return Message(memoryview(data), 0, source, root)


def _signed(v: int) -> int:
  return v - (1 << 64) if v >= 1 << 63 else v


def _varint(data, pos: int, base: int, source: str, path: str) -> tuple[int, int]:
  result = shift = 0
  start = pos
  while True:
    if pos >= len(data):
      raise WireError(f"{source}: truncated varint at byte {base + start} ({path})")
    b = data[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, pos
    shift += 7
    if shift >= 70:
      raise WireError(f"{source}: malformed varint at byte {base + start} ({path})")


def _records(data: memoryview, base: int, source: str, path: str):
  pos, n = 0, len(data)
  while pos < n:
    start = pos
    key, pos = _varint(data, pos, base, source, path)
    number, wire_type = key >> 3, key & 7
    if number == 0:
      raise WireError(f"{source}: invalid field number 0 at byte {base + start} "
                      f"({path}); the file is corrupt or not a protobuf")
    if wire_type == VARINT:
      value, pos = _varint(data, pos, base, source, f"{path} field {number}")
      yield Field(number, wire_type, value, base + start)
    elif wire_type in (I32, I64):
      size = 4 if wire_type == I32 else 8
      if pos + size > n:
        raise WireError(f"{source}: truncated {size * 8}-bit field {number} at byte "
                        f"{base + pos} ({path}): needs {size} bytes, "
                        f"{n - pos} left")
      value = int.from_bytes(data[pos:pos + size], "little")
      yield Field(number, wire_type, value, base + pos)
      pos += size
    elif wire_type == LEN:
      size, pos = _varint(data, pos, base, source, f"{path} field {number} length")
      if pos + size > n:
        raise WireError(f"{source}: truncated length-delimited field {number} at "
                        f"byte {base + pos} ({path}): declares {size} bytes, "
                        f"{n - pos} left")
      yield Field(number, wire_type, data[pos:pos + size], base + pos)
      pos += size
    elif wire_type == SGROUP:
      # Groups are obsolete and absent from Caffe files; skip to the matching end.
      depth = 1
      while depth:
        k, pos = _varint(data, pos, base, source, f"{path} group {number}")
        wt = k & 7
        if wt == SGROUP:
          depth += 1
        elif wt == EGROUP:
          depth -= 1
        elif wt == VARINT:
          _, pos = _varint(data, pos, base, source, path)
        elif wt in (I32, I64):
          pos += 4 if wt == I32 else 8
        elif wt == LEN:
          size, pos = _varint(data, pos, base, source, path)
          pos += size
        if pos > n:
          raise WireError(f"{source}: truncated group {number} at byte "
                          f"{base + start} ({path})")
    else:
      raise WireError(f"{source}: invalid wire type {wire_type} for field {number} "
                      f"at byte {base + start} ({path}); the file is corrupt or "
                      "not a protobuf")
