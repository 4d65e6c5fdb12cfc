"""The gallery over HTTP on this machine (`python -m stviz_jax.gallery --serve DIR`).

Some browsers will not play video from `file://` pages (Safari, and Chromium
with some policies), and a page on a port can be opened from another tab,
tunnelled or shared on a lab machine. Standard library only: a threaded
`http.server` rooted at the work directory, answering byte-range requests
(`Range: bytes=a-b`), which Safari needs to play MP4 and every browser uses
to seek. It listens on localhost unless told otherwise.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading

from absl import logging

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _Handler(http.server.SimpleHTTPRequestHandler):
  """Static files with single byte ranges; requests logged at debug level."""

  def send_head(self):
    match = _RANGE.match(self.headers.get("Range", "").strip())
    path = self.translate_path(self.path)
    if not match or os.path.isdir(path) or not os.path.isfile(path):
      return super().send_head()
    size = os.path.getsize(path)
    first, last = match.groups()
    if first:
      start, end = int(first), min(int(last) if last else size - 1, size - 1)
    else:  # "bytes=-N": the last N bytes.
      start, end = max(size - int(last or 0), 0), size - 1
    if start > end or start >= size:
      self.send_response(416)
      self.send_header("Content-Range", f"bytes */{size}")
      self.end_headers()
      return None
    f = open(path, "rb")  # pylint: disable=consider-using-with  # closed by copyfile's caller.
    f.seek(start)
    self.send_response(206)
    self.send_header("Content-Type", self.guess_type(path))
    self.send_header("Accept-Ranges", "bytes")
    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
    self.send_header("Content-Length", str(end - start + 1))
    self.end_headers()
    self._remaining = end - start + 1
    return f

  def copyfile(self, source, outputfile):
    remaining = getattr(self, "_remaining", None)
    if remaining is None:
      return super().copyfile(source, outputfile)
    self._remaining = None
    while remaining > 0:
      chunk = source.read(min(64 * 1024, remaining))
      if not chunk:
        break
      outputfile.write(chunk)
      remaining -= len(chunk)
    return None

  def end_headers(self):
    if not self.headers.get("Range"):
      self.send_header("Accept-Ranges", "bytes")
    super().end_headers()

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    logging.debug("gallery server: " + format, *args)


def server(directory: str, host: str = "127.0.0.1",
           port: int = 0) -> http.server.ThreadingHTTPServer:
  """An HTTP server of `directory` (not started); `port=0` takes a free port."""
  if not os.path.isdir(directory):
    raise NotADirectoryError(f"--serve {directory}: not a directory (give a run's workdir)")
  handler = functools.partial(_Handler, directory=os.path.abspath(directory))
  return http.server.ThreadingHTTPServer((host, port), handler)


def url(httpd: http.server.ThreadingHTTPServer, page: str = "index.html") -> str:
  host, port = httpd.server_address[:2]
  return f"http://{host}:{port}/{page}"


def serve_in_thread(directory: str, host: str = "127.0.0.1",
                    port: int = 0) -> http.server.ThreadingHTTPServer:
  """Starts serving `directory` in a daemon thread; `.shutdown()` stops it."""
  httpd = server(directory, host, port)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  return httpd


def serve(directory: str, host: str = "127.0.0.1", port: int = 8000) -> None:
  """Serves `directory` until interrupted (Ctrl-C), printing the address to open."""
  with server(directory, host, port) as httpd:
    print(f"gallery: serving {os.path.abspath(directory)} at {url(httpd)} "
          "(Ctrl-C stops)", flush=True)
    try:
      httpd.serve_forever()
    except KeyboardInterrupt:
      pass
