"""Atomic file writes: a result file is either absent or complete, even after `kill -9`.

Data goes to a temporary file in the destination folder, which is renamed over the target (os.replace is
atomic on POSIX within one file system). The file gets the permissions of a plain `open` under the umask.
"""
from __future__ import annotations

import io
import json
import os
import pathlib
import tempfile

import numpy as np


def write_bytes(path, data: bytes) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)   # mkstemp creates 0600
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode())


def write_json(path, obj) -> None:
  write_text(path, json.dumps(obj, indent=1, default=float) + '\n')


def write_png(path, image_u8: np.ndarray) -> None:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(image_u8).save(buf, format='PNG')
  write_bytes(path, buf.getvalue())
