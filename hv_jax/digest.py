"""Content hashes that reruns, resumes and caches key on: a result is reused only for the same bytes."""
from __future__ import annotations

import hashlib
import os
from typing import Iterable

import numpy as np


def file_sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def path_sha256(path) -> str:
  """A file's sha256, or for a folder the sha256 of every file's relative name and sha256 (sorted)."""
  path = os.fspath(path)
  if os.path.isfile(path):
    return file_sha256(path)
  h = hashlib.sha256()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      h.update(f'{os.path.relpath(full, path)}\0{file_sha256(full)}\0'.encode())
  return h.hexdigest()


def weights_identity(path: str) -> str:
  """A weight file or folder by content ('sha256:...'), so replacing the file at the same path is seen and
  moving it is not; '' for no path, the path itself when it does not exist (the metric is then unavailable)."""
  if not path:
    return ''
  return f'sha256:{path_sha256(path)}' if os.path.exists(path) else f'missing:{path}'


def arrays_sha256(arrays: Iterable[np.ndarray]) -> str:
  """sha256 over arrays' dtypes, shapes and bytes."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f'{a.dtype.str}{a.shape}\0'.encode())
    h.update(a.tobytes())
  return h.hexdigest()
