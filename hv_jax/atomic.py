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
from PIL import Image

from hv_jax.errors import UserError


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
  """Strict JSON: NaN and +-inf are refused (ValueError), since `json` would write them as the invalid tokens
  NaN/Infinity. A caller whose values may be non-finite encodes them explicitly first."""
  write_text(path, json.dumps(obj, indent=1, default=float, allow_nan=False) + '\n')


def write_png(path, image_u8: np.ndarray) -> None:
  buf = io.BytesIO()
  Image.fromarray(image_u8).save(buf, format='PNG')
  write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- output folders
# A failed run leaves no empty folder: a job checks that its output folder can be made (`writable_problem`),
# creates it only when it has something to write (write_* create parents), and a job that must create a
# folder early (e.g. for checkpoints) removes what it created if it ends with nothing written in it.

def writable_problem(folder) -> str:
  """'' if `folder` exists and takes a file, or could be created; else why not (one line). Creates nothing
  that is left behind: the probe file goes into the nearest existing folder and is removed."""
  folder = pathlib.Path(folder).absolute()
  existing = folder
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    return f'{existing} is not a folder'
  try:
    fd, probe = tempfile.mkstemp(prefix='.write-test-', dir=existing)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    return f'{existing} is not writable ({e.strerror or e})'
  return ''


def require_writable(folder, message: str = 'output folder {folder} is not writable: {problem}',
                     error=UserError) -> pathlib.Path:
  """`folder` as a Path if it exists and takes a file, or could be created; else raises `error` with
  `message` (fields {folder} and {problem}: `writable_problem`'s one line). Creates nothing: every job checks
  its output folder with this before any work."""
  problem = writable_problem(folder)
  if problem:
    raise error(message.format(folder=folder, problem=problem))
  return pathlib.Path(folder)


def missing_dirs(folder) -> list:
  """The folders of `folder` (itself included) that do not exist yet, outermost first."""
  missing, p = [], pathlib.Path(folder).absolute()
  while not p.exists():
    missing.append(p)
    p = p.parent
  return missing[::-1]


def make_dirs(folder) -> list:
  """os.makedirs(folder, exist_ok=True), returning the folders it created, outermost first."""
  created = missing_dirs(folder)
  pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
  return created


def remove_empty_dirs(created) -> None:
  """Removes folders that make_dirs created (innermost first) as long as they are empty."""
  for d in reversed(list(created)):
    try:
      os.rmdir(d)
    except OSError:
      return
