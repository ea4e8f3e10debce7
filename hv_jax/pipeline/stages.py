"""Stage records of a multi-stage run: a stage is skipped on a rerun only when it ran with the same inputs and
settings and its outputs are on disk unchanged.

A record `<folder>/stages/<name>.json` holds the stage's identity (its settings and the sha256 of the files it
read), the sha256 of every file it wrote, its result (JSON) and its seconds. It is written atomically after
the outputs, so a stage killed midway has no record and runs again. A record whose identity differs from the
current one (another setting, a changed upstream file) is not used: the stage runs again and replaces it (the
log says why). Stages that keep their own records (the sampler's manifest, NeuS's metrics.json) are not
wrapped here: they check their outputs themselves.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Sequence

from absl import logging

from hv_jax import atomic, checks, digest

STAGES = 'stages'


def _record_path(folder: Path, name: str) -> Path:
  return Path(folder) / STAGES / f'{name}.json'


def _json(x):
  return json.loads(json.dumps(x))


def cached(folder: Path, name: str, identity: Dict[str, Any], outputs: Sequence[str],
           compute: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
  """The stage's result: the stored one when its record matches `identity` and its `outputs` (paths relative
  to `folder`) are unchanged on disk, else `compute()` (which writes the outputs) and a new record.

  Returns the result dict with 'seconds' (of the run that made it) and 'skipped' (True when reused)."""
  folder = Path(folder)
  identity = _json(identity)
  path = _record_path(folder, name)
  if path.is_file():
    try:
      rec = json.loads(path.read_text())
    except (OSError, ValueError):
      rec = None
    why = _stale(folder, rec, identity)
    if not why:
      return dict(rec['result'], seconds=rec['seconds'], skipped=True)
    logging.warning('%s: redoing the %s stage (%s)', folder, name, why)
    print(f'{folder.name}: redoing the {name} stage ({why})')
  t0 = time.time()
  result = _json(compute())
  missing = [o for o in outputs if not (folder / o).is_file()]
  if missing:
    raise RuntimeError(f'the {name} stage did not write {", ".join(missing)}')
  seconds = time.time() - t0
  atomic.write_json(path, {'identity': identity, 'seconds': seconds, 'result': result,
                           'outputs': {o: digest.file_sha256(folder / o) for o in outputs}})
  return dict(result, seconds=seconds, skipped=False)


def _stale(folder: Path, rec, identity) -> str:
  """Why a stored record cannot be reused ('' when it can)."""
  if not isinstance(rec, dict) or not {'identity', 'outputs', 'result', 'seconds'} <= set(rec):
    return 'its record is unreadable'
  diff = checks.differing_keys(rec['identity'], identity)
  if diff:
    return f'other inputs or settings: {", ".join(diff[:4])}'
  for rel, sha in rec['outputs'].items():
    p = folder / rel
    if not p.is_file():
      return f'{rel} is missing'
    if digest.file_sha256(p) != sha:
      return f'{rel} was changed since it was written'
  return ''


def file_identity(folder: Path, paths: Sequence[Path]) -> Dict[str, str]:
  """{path relative to folder (or absolute): sha256} of the files a stage reads."""
  out = {}
  for p in paths:
    p = Path(p)
    try:
      key = str(p.relative_to(folder))
    except ValueError:
      key = str(p)
    out[key] = digest.file_sha256(p)
  return out
