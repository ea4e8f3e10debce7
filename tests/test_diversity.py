"""The diversity-study runner on the behaviour tests' random model (tests/small_model.py): the plan (grid, common
random numbers, the split over processes), kill -9 and restart (nothing lost, nothing duplicated, the same table as
an uninterrupted run), a strip written just before a kill is finished without re-sampling, and 2 processes x 4 CPU
devices (jax.distributed on localhost) give the results of 1 process."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import parity as P
import small_model
from experiments import diversity, store

GSO = P.ROOT / 'tests' / 'fixtures' / 'gso'   # bell (no mesh), cream (mesh); max_inputs=1 takes bell
UNITS = 4        # 1 input x 2 instances x 2 settings: HarmonyView (s1, s2) = (0, 1) and (2, 1). One guidance
                 # mode = one compilation per device count (a CFG setting would add one: its branches differ)

CONFIG = """
from hv_jax import cli

def get_config():
  c = cli.load_config({demo_sweep!r})
  c.data.path = {data!r}
  c.data.tfds_dir = {tfds!r}
  c.data.max_inputs = 1
  c.model = {model!r}
  c.output_dir = {out!r}
  c.sample_num = 2
  c.sample_steps = 2
  c.sweep.s1 = (0.0, 2.0)
  c.sweep.s2 = (1.0,)
  c.sweep.cfg = ()
  c.metrics.names = 'cd_score,psnr_ssim'
  c.metrics.size = 0
  c.per_device_batch = {batch}
  c.progress = False
  return c
"""


@pytest.fixture(scope='module')
def work(tmp_path_factory):
  """A shared folder: the TFDS build and JAX's compilation cache are reused by every run of this module."""
  return tmp_path_factory.mktemp('diversity')


def _config_file(work: pathlib.Path, name: str, batch: int = 1) -> pathlib.Path:
  path = work / f'{name}_config.py'
  path.write_text(CONFIG.format(demo_sweep=str(P.ROOT / 'experiments' / 'configs' / 'demo_sweep.py'), data=str(GSO),
                                tfds=str(work / 'tfds'), out=str(work / name), batch=batch,
                                model=str(small_model.PATH)))
  return path


def _env(work: pathlib.Path, devices: int = 1) -> dict:
  """JAX's persistent compilation cache: the session's (tests/conftest.py) where there is one, so the runs of
  this module (and other tests' processes with the same device count) read back what an earlier run compiled."""
  env = dict(os.environ, PYTHONPATH=str(P.ROOT), JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_COMPILATION_CACHE_DIR=os.environ.get('JAX_COMPILATION_CACHE_DIR', str(work / 'jax_cache')),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
  return env


def _cmd(config: pathlib.Path, *extra: str):
  return [sys.executable, '-m', 'experiments.diversity', f'--config={config}', *extra]


def _run(work, name, *extra, devices=1, batch=1):
  r = subprocess.run(_cmd(_config_file(work, name, batch), *extra), cwd=P.ROOT, env=_env(work, devices),
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def _rows_in_shards(root: pathlib.Path) -> int:
  n = 0
  for p in (root / 'index').glob('p*.sqlite'):
    db = sqlite3.connect(p)
    try:
      n += db.execute('SELECT COUNT(*) FROM units').fetchone()[0]
    except sqlite3.OperationalError as e:   # created, table not yet there
      assert 'no such table' in str(e)
    finally:
      db.close()
  return n


def _strip(root, r) -> np.ndarray:
  return np.asarray(Image.open(root / r['strip']), np.int16)


def _assert_same_results(a: pathlib.Path, b: pathlib.Path):
  """The same units with the same values. A program compiled for another device layout rounds floats
  differently (~1e-6), which flips a few uint8 pixels by one grey level; the metrics of the flipped images
  then move by ~1e-4 relative (measured: CD's D 2.6e-4), hence the tolerances. Identical strips must give
  identical metrics."""
  ra, rb = store.read_rows(a), store.read_rows(b)
  assert [(r['input'], r['instance'], r['setting']) for r in ra] == \
         [(r['input'], r['instance'], r['setting']) for r in rb]
  for x, y in zip(ra, rb):
    sa, sb = _strip(a, x), _strip(b, y)
    assert np.abs(sa - sb).max() <= 1 and (sa != sb).mean() < 1e-3, f"strip of {x['setting']}"
    same = np.array_equal(sa, sb)
    for m in ('cd_D', 'cd_S_var', 'psnr', 'ssim', 's1', 's2', 'cfg'):
      np.testing.assert_allclose(x[m], y[m], rtol=1e-5 if same else 2e-3, atol=1e-6 if same else 1e-4,
                                 err_msg=f"{m} of {x['setting']}")


# ----------------------------------------------------------------------------- the plan

def _sweep(s1=(0.0, 2.0), s2=(1.0,), cfg=(2.0,), none=False):
  return diversity.SweepSettings(s1=tuple(s1), s2=tuple(s2), cfg=tuple(cfg), none=none)


def test_grid_split_and_common_random_numbers():
  settings = diversity.settings_of(_sweep(s1=(0, 1, 2), s2=(0.5, 1), cfg=(1, 3), none=True))
  names = [s.name for s in settings]
  assert names[:3] == ['none', 'cfg_s=1', 'cfg_s=3'] and len(names) == 3 + 6
  assert 'harmonyview_s1=2_s2=0.5' in names
  with pytest.raises(diversity.UserError, match='empty'):
    diversity.settings_of(_sweep(s1=(), s2=(), cfg=()))
  with pytest.raises(diversity.UserError, match='repeats'):
    diversity.settings_of(_sweep(cfg=(2, 2.0)))
  # an input's id (its noise) comes from its name, not its place in the list: adding inputs changes no unit
  assert diversity.input_id_of('bell') == 0x733be087   # zlib.crc32(b'bell'): the same on every host and run
  assert diversity.input_id_of('bell') != diversity.input_id_of('cream')
  inputs = [diversity.Input(f'obj{i}', i, None, 0.5, None, None) for i in range(3)]
  units = diversity.work_units(inputs, 4, settings)
  from hv_jax import parallel
  shares = [parallel.process_share(units, p, 3) for p in range(3)]
  keys = [u.key for s in shares for u in s]
  assert sorted(keys) == sorted(u.key for u in units) and len(set(keys)) == len(units)   # disjoint, complete
  # common random numbers: the key of a unit depends on (seed, input, instance) only, never on the setting
  from hv_jax.sampling.sampler import instance_keys
  k = np.asarray(instance_keys(5, [u.input.input_id for u in units], [u.instance for u in units]))
  for u, key in zip(units, k):
    np.testing.assert_array_equal(key, k[units.index(diversity.Unit(u.input, u.instance, settings[0]))])


# ----------------------------------------------------------------------------- runs

@pytest.fixture(scope='module')
def reference(work):
  """An uninterrupted run: 1 process, 1 device."""
  r = _run(work, 'reference')
  assert f'{UNITS} units sampled' in r.stdout, r.stdout
  return work / 'reference'


def test_study_writes_every_unit_once(reference):
  rows = store.read_rows(reference)
  assert len(rows) == UNITS == _rows_in_shards(reference)
  study = json.loads((reference / 'study.json').read_text())
  assert study['random_weights'] and study['settings'] == ['harmonyview_s1=0_s2=1', 'harmonyview_s1=2_s2=1']
  for r in rows:
    assert (reference / r['strip']).is_file()
    assert np.isfinite([r['psnr'], r['ssim'], r['cd_D']]).all() and np.isnan(r['lpips'])
  # common random numbers: the two HarmonyView settings of an instance start from the same noise, so
  # they differ far less than two instances of one setting
  s = lambda k, name: _strip(reference, next(r for r in rows if r['instance'] == k and r['setting'] == name))
  a, b, c = s(0, 'harmonyview_s1=0_s2=1'), s(0, 'harmonyview_s1=2_s2=1'), s(1, 'harmonyview_s1=0_s2=1')
  assert np.abs(a - b).mean() < 0.5 * np.abs(a - c).mean()


def test_kill_9_and_restart_lose_and_duplicate_nothing(work, reference):
  config = _config_file(work, 'killed')
  root = work / 'killed'
  p = subprocess.Popen(_cmd(config), cwd=P.ROOT, env=_env(work), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  try:   # kill -9 as soon as the first unit is committed (and before the last)
    while time.time() < deadline and p.poll() is None:
      if (root / 'index' / 'p0.sqlite').exists() and _rows_in_shards(root) >= 1:
        break
      time.sleep(0.05)
    assert p.poll() is None, 'the run ended before it could be killed'
    p.send_signal(signal.SIGKILL)
  finally:
    p.wait()
  killed_at = _rows_in_shards(root)
  assert 1 <= killed_at < UNITS
  r = _run(work, 'killed')
  assert f'{killed_at} already done' in r.stdout or 'finished from saved strips' in r.stdout, r.stdout
  assert _rows_in_shards(root) == UNITS            # nothing lost, nothing duplicated
  _assert_same_results(reference, root)
  assert not list(root.rglob('*.tmp'))             # no partial files left behind
  # the same final table as the uninterrupted run (same batches on one device: the same numbers)
  from experiments import report
  tables = []
  for r in (reference, root):
    assert report.main([f'--config.results={r}', f'--config.out={work / f"report_{r.name}"}']) == 0
    tables.append((work / f'report_{r.name}' / 'table.csv').read_text())
  assert tables[0] == tables[1]


def test_strip_without_row_is_finished_without_resampling(work, reference):
  # kill -9 between the strip's rename and the row's commit: simulate by deleting one committed row
  config = _config_file(work, 'orphan')
  root = work / 'orphan'
  import shutil
  shutil.copytree(reference, root)
  with sqlite3.connect(root / 'index' / 'p0.sqlite') as db:
    db.execute("DELETE FROM units WHERE instance = 1 AND setting = 'harmonyview_s1=2_s2=1'")
  r = subprocess.run(_cmd(config), cwd=P.ROOT, env=_env(work), capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert '0 units sampled, 1 finished from saved strips, 3 already done' in r.stdout, r.stdout
  assert _rows_in_shards(root) == UNITS
  _assert_same_results(reference, root)


def test_two_processes_of_four_devices_match_one_process(work, reference):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  config = _config_file(work, 'two_procs', batch=1)
  procs = [subprocess.Popen(_cmd(config, '--config.distributed=True', f'--config.coordinator_address=127.0.0.1:{port}',
                                 '--config.num_processes=2', f'--config.process_id={i}'),
                            cwd=P.ROOT, env=_env(work, devices=4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (o, e) in zip(procs, outs):
    assert p.returncode == 0, e[-3000:]
  root = work / 'two_procs'
  assert sorted(x.name for x in (root / 'index').glob('*.sqlite')) == ['p0.sqlite', 'p1.sqlite']
  assert _rows_in_shards(root) == UNITS and {r['process'] for r in store.read_rows(root)} == {0, 1}
  _assert_same_results(reference, root)


def test_restart_with_other_settings_is_refused(work, reference):
  r = subprocess.run(_cmd(_config_file(work, 'reference'), '--config.seed=1'), cwd=P.ROOT, env=_env(work),
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith('error:'), r.stderr
  assert 'seed' in r.stderr


def test_restart_with_a_changed_input_is_refused(work, reference, tmp_path):
  import shutil
  data = tmp_path / 'gso'
  shutil.copytree(GSO, data)
  img = np.asarray(Image.open(data / 'bell' / '000.png')).copy()
  img[0, 0, :3] ^= 1                    # another 'bell': one pixel differs
  Image.fromarray(img).save(data / 'bell' / '000.png')
  root = tmp_path / 'study'
  shutil.copytree(reference, root)
  config = _config_file(work, 'reference')
  r = subprocess.run(_cmd(config, f'--config.data.path={data}', f'--config.output_dir={root}'), cwd=P.ROOT,
                     env=_env(work), capture_output=True, text=True, timeout=900)
  errors = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert r.returncode == 2 and len(errors) == 1 and 'input bell differs from the one this study' in errors[0], r.stderr
  assert _rows_in_shards(root) == UNITS


def _demo_study(tmp_path, **kw):
  """experiments/configs/demo_sweep.py's StudySettings, 1 input, 2 steps, with the (dotted) fields `kw` set."""
  from hv_jax import cli, settings
  c = cli.load_config(P.ROOT / 'experiments' / 'configs' / 'demo_sweep.py')
  c.output_dir = str(tmp_path / 'study')
  c.data.max_inputs, c.sample_steps, c.progress = 1, 2, False
  for k, v in kw.items():
    sub, _, field = k.rpartition('.')
    (c[sub] if sub else c)[field] = v
  return settings.from_dict(diversity.StudySettings, c.to_dict())


@pytest.mark.parametrize('field,value,needle', [
    ('sweep.s1', (0.0, float('nan')), '--config.sweep.s1=nan: must be a finite number'),
    ('sweep.cfg', (float('inf'),), '--config.sweep.cfg=inf'),
    ('eta', float('nan'), '--config.eta=nan'),
    ('metrics.size', -1, '--config.metrics.size=-1'),
    # the default elevation, unused by GSO inputs (each has its own), is checked all the same (it is recorded)
    ('elevation', float('nan'), '--config.elevation=nan: elevation must be a finite number'),
    ('elevation', 75.0, '--config.elevation=75.0: elevation must be in [-10, 40] degrees'),
    # the sampler's settings a study takes from its sweep and data blocks: refused, not ignored
    ('s1', 3.0, '--config.s1=3.0 is not used by a study: the HarmonyView scales come from --config.sweep.s1'),
    ('cfg_scale', 4.0, '--config.cfg_scale=4.0 is not used by a study'),
    ('guidance', 'cfg', "--config.guidance='cfg' is not used by a study"),
    ('input', 'photo.png', "--config.input='photo.png' is not used by a study: its inputs come from --config.data"),
    # the process fields: only with distributed=True (else each process would run every unit), all or none
    ('num_processes', 2, '--config.num_processes=2 without --config.distributed=True'),
    ('distributed+coordinator_address', 'localhost:1234', '--config.num_processes=0: must be >= 1'),
    ('distributed+coordinator_address+num_processes+process_id', ('localhost:1234', 2, 2),
     '--config.process_id=2: must be in [0, 1]'),
    ('distributed+process_id', 1, '--config.num_processes and --config.process_id go with --config.coordinator_address'),
    ('sample_steps', 30, 'nearest: 25 and 40'),
    ('batch_view_num', 5, '--config.batch_view_num=5: must divide the 64 rows'),   # 4 instances per call
    ('metrics.names', 'cd_score,bogus', "unknown metrics ['bogus']"),   # found after the weights are loaded
])
def test_bad_study_settings_are_one_line_and_leave_no_folder(tmp_path, field, value, needle):
  if '+' in field:       # several fields: 'distributed' set True, then the others take `value`('s items)
    names = field.split('+')[1:]
    values = value if isinstance(value, tuple) and len(names) > 1 else (value,)
    c = _demo_study(tmp_path, distributed=True, **dict(zip(names, values)))
  else:
    c = _demo_study(tmp_path, **{field: value})
  with pytest.raises(diversity.UserError) as e:
    diversity.run(c)
  assert needle in str(e.value) and '\n' not in str(e.value), str(e.value)
  assert not (tmp_path / 'study').exists()


def test_gso_build_goes_into_the_study_folder_by_default(tmp_path):
  c = _demo_study(tmp_path, **{'data.tfds_dir': ''})
  records = diversity.load_records(c)
  assert [r['name'] for r in records] == ['bell']
  assert (tmp_path / 'study' / 'tfds' / 'gso_eval').is_dir()
