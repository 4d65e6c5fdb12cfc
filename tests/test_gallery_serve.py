"""`python -m stviz_jax.gallery --serve DIR`: the gallery over HTTP with byte ranges."""

import os
import pathlib
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from stviz_jax.gallery import serve


@pytest.fixture()
def served(tmp_path):
  (tmp_path / "index.html").write_text("<html>hi</html>")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "clip.mp4").write_bytes(bytes(range(256)) * 4)  # 1024 bytes
  httpd = serve.serve_in_thread(str(tmp_path))
  yield httpd, tmp_path
  httpd.shutdown()
  httpd.server_close()


def _get(url, headers=None):
  req = urllib.request.Request(url, headers=headers or {})
  with urllib.request.urlopen(req, timeout=10) as r:
    return r.status, r.headers, r.read()


def test_pages_and_byte_ranges(served):
  httpd, root = served
  status, headers, body = _get(serve.url(httpd))
  assert status == 200 and body == b"<html>hi</html>"
  data = (root / "sub" / "clip.mp4").read_bytes()
  clip = serve.url(httpd, "sub/clip.mp4")
  status, headers, body = _get(clip)
  assert status == 200 and body == data and headers["Accept-Ranges"] == "bytes"
  assert headers["Content-Type"] == "video/mp4"
  for rng, want, crange in (("bytes=10-19", data[10:20], "bytes 10-19/1024"),
                            ("bytes=1000-", data[1000:], "bytes 1000-1023/1024"),
                            ("bytes=-4", data[-4:], "bytes 1020-1023/1024"),
                            ("bytes=1020-5000", data[1020:], "bytes 1020-1023/1024")):
    status, headers, body = _get(clip, {"Range": rng})
    assert (status, body, headers["Content-Range"]) == (206, want, crange), rng
    assert int(headers["Content-Length"]) == len(want)
  with pytest.raises(urllib.error.HTTPError) as e:
    _get(clip, {"Range": "bytes=2000-"})
  assert e.value.code == 416


def test_nothing_outside_the_directory_is_served(served):
  httpd, root = served
  (root.parent / "secret.txt").write_text("no")
  with pytest.raises(urllib.error.HTTPError) as e:
    _get(serve.url(httpd, "../secret.txt"))
  assert e.value.code == 404


def test_serve_names_a_missing_directory(tmp_path):
  with pytest.raises(NotADirectoryError, match="--serve .*none: not a directory"):
    serve.server(str(tmp_path / "none"))


def test_command_line_serves_and_refuses_an_unbuilt_directory(tmp_path):
  cmd = [sys.executable, "-m", "stviz_jax.gallery", f"--serve={tmp_path}", "--port=0"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and "no index.html" in out.stderr.strip().splitlines()[-1]
  (tmp_path / "index.html").write_text("<html>run</html>")
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    line = proc.stdout.readline()
    m = re.search(r"(http://127\.0\.0\.1:\d+/index\.html)", line)
    assert m, line
    assert _get(m.group(1))[2] == b"<html>run</html>"
  finally:
    proc.terminate()
    proc.wait(timeout=30)
  out = subprocess.run([sys.executable, "-m", "stviz_jax.gallery"], capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 2 and "--workdir=DIR" in out.stderr and "--serve=DIR" in out.stderr
