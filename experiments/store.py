"""The results store of a diversity study: survives `kill -9`, resumes without redoing or duplicating work.

Layout of a study folder (RESULTS):
  study.json                              the study's config and grid (written once; a restart must match it)
  strips/<input>/<setting>/<k>.png        the 16 views of unit (input, setting, instance k), left to right
  index/p<process>.sqlite                 one SQLite index per process: a row per finished unit

A unit (input, instance, setting) is finished exactly when its row exists. Its strip is written atomically
(temporary file + rename) BEFORE the row is committed, so a row never points at a missing or partial file;
a strip without a row (killed between the two) is picked up by the restart without re-sampling. Rows are
committed in one transaction per batch with PRIMARY KEY (input, instance, setting) and INSERT OR IGNORE, so
a unit can never appear twice. One index file per process keeps writers apart (no lock contention on a pod's
shared file system); readers take the union of all shards.
"""
from __future__ import annotations

import glob
import math
import os
import pathlib
import sqlite3
from typing import Dict, Iterable, List, Sequence, Set, Tuple

import numpy as np

from hv_jax import atomic
from hv_jax.sampling import modes

# metric columns: NULL where a metric is unavailable (no GT, no weights, image too small for RAFT)
METRICS = ('cd_D', 'cd_S_var', 'psnr', 'ssim', 'lpips', 'e_flow')
# the guidance modes' scale columns (modes.MODES), HarmonyView's first: ('s1', 's2', 'cfg'); NULL where a mode has none
SCALE_COLUMNS = tuple(dict.fromkeys(c for m in reversed(modes.MODES.values()) for c in m.columns))
COLUMNS = (('input', 'TEXT'), ('instance', 'INTEGER'), ('setting', 'TEXT'), ('input_id', 'INTEGER'),
           ('mode', 'TEXT')) + tuple((c, 'REAL') for c in SCALE_COLUMNS) + (('seed', 'INTEGER'),
           ('strip', 'TEXT')) + tuple((m, 'REAL') for m in METRICS) + (
           ('seconds', 'REAL'), ('process', 'INTEGER'), ('finished', 'REAL'))
NAMES = tuple(c for c, _ in COLUMNS)
Key = Tuple[str, int, str]    # (input, instance, setting)


def setting_name(mode: str, scales: Sequence[float]) -> str:
  """A folder-safe tag of one guidance setting: 'harmonyview_s1=2_s2=1', 'cfg_s=3', 'none'."""
  return modes.mode(mode).setting_name(scales)


def strip_relpath(input_name: str, setting: str, instance: int) -> str:
  return f'strips/{input_name}/{setting}/{instance}.png'


class Store:
  """One process's writer (its own shard) plus read access to every shard of the study."""

  def __init__(self, root, process_index: int = 0):
    self.root = pathlib.Path(root)
    (self.root / 'index').mkdir(parents=True, exist_ok=True)
    self.process_index = int(process_index)
    self.path = self.root / 'index' / f'p{self.process_index}.sqlite'
    self._db = _connect(self.path)

  def close(self) -> None:
    self._db.close()

  # ---------------------------------------------------------------- strips
  def strip_path(self, input_name: str, setting: str, instance: int) -> pathlib.Path:
    return self.root / strip_relpath(input_name, setting, instance)

  def write_strip(self, input_name: str, setting: str, instance: int, strip_u8: np.ndarray) -> str:
    rel = strip_relpath(input_name, setting, instance)
    atomic.write_png(self.root / rel, strip_u8)
    return rel

  # ---------------------------------------------------------------- rows
  def done(self) -> Set[Key]:
    """Keys of every finished unit, over all shards (a restart may run with another process count)."""
    return {(r['input'], r['instance'], r['setting']) for r in read_rows(self.root)}

  def put(self, rows: Iterable[Dict]) -> int:
    """Commits rows in ONE transaction (all or nothing); an existing key is left as it is. Returns the
    number of rows inserted."""
    values = [tuple(_sql_value(r.get(c)) for c in NAMES) for r in rows]
    with self._db:   # BEGIN ... COMMIT (ROLLBACK on an exception)
      before = self._db.total_changes
      self._db.executemany(f'INSERT OR IGNORE INTO units ({",".join(NAMES)}) VALUES '
                           f'({",".join("?" * len(NAMES))})', values)
      return self._db.total_changes - before


def read_rows(root) -> List[Dict]:
  """Every finished unit of a study, one row per key (the earliest finished if two shards hold it), sorted
  by (input, setting, instance). Metric values are floats, NaN where unavailable."""
  best: Dict[Key, Dict] = {}
  for path in sorted(glob.glob(os.path.join(str(root), 'index', 'p*.sqlite'))):
    db = sqlite3.connect(path, timeout=60)
    try:
      db.row_factory = sqlite3.Row
      for r in db.execute(f'SELECT {",".join(NAMES)} FROM units'):
        row = {k: r[k] for k in NAMES}
        for m in METRICS + SCALE_COLUMNS:
          row[m] = math.nan if row[m] is None else float(row[m])
        key = (row['input'], row['instance'], row['setting'])
        if key not in best or row['finished'] < best[key]['finished']:
          best[key] = row
    except sqlite3.OperationalError as e:   # a shard created but never written (killed at once)
      if 'no such table' not in str(e):
        raise
    finally:
      db.close()
  return sorted(best.values(), key=lambda r: (r['input'], r['setting'], r['instance']))


def _connect(path: pathlib.Path) -> sqlite3.Connection:
  db = sqlite3.connect(str(path), timeout=60, isolation_level='DEFERRED')
  db.execute('PRAGMA journal_mode=WAL')
  db.execute('PRAGMA synchronous=FULL')     # a committed batch survives a crash of the machine, not just kill -9
  cols = ', '.join(f'{c} {t}' for c, t in COLUMNS)
  with db:
    db.execute(f'CREATE TABLE IF NOT EXISTS units ({cols}, PRIMARY KEY (input, instance, setting))')
  return db


def _sql_value(v):
  if isinstance(v, (np.floating, float)):
    v = float(v)
    return None if math.isnan(v) else v
  if isinstance(v, np.integer):
    return int(v)
  return v
