"""The modules that sampling, studies, evaluation and NeuS share: the guidance-mode table, strip and view I/O,
the sharded batch runner and the run-owned progress bars (no compilation of the model here)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import report, store
from hv_jax import parallel
from hv_jax.data import views
from hv_jax.sampling import guidance, modes, pipeline
from hv_jax.sampling.sampler import SamplerConfig, batch_arrays, instance_keys


# ----------------------------------------------------------------------------- guidance modes

def test_mode_table_drives_every_reader():
  assert list(modes.MODES) == ['none', 'cfg', 'harmonyview']
  np.testing.assert_array_equal(guidance.branch_scales('harmonyview', 2.5), [[1, 1, 1], [0, 0, 1], [1, 2.5, 0]])
  np.testing.assert_array_equal(guidance.branch_scales('cfg'), [[1, 1, 1], [0, 0, 0]])
  eps = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
  np.testing.assert_array_equal(guidance.combine('harmonyview', eps, [2., 1.]),
                                eps[0] + 2 * (eps[0] - eps[1]) + 1 * (eps[0] - eps[2]))      # Eq. 9
  np.testing.assert_array_equal(guidance.combine('cfg', eps[:2], [3.]), eps[1] + 3 * (eps[0] - eps[1]))  # Eq. 5
  assert [SamplerConfig(guidance=m).num_scales for m in modes.MODES] == [1, 1, 2]
  assert [modes.mode(m).uses_uc2_concat_scale for m in modes.MODES] == [False, False, True]
  assert [store.setting_name(m, s) for m, s in (('none', ()), ('cfg', (3,)), ('harmonyview', (2, .5)))] == [
      'none', 'cfg_s=3', 'harmonyview_s1=2_s2=0.5']
  assert store.SCALE_COLUMNS == ('s1', 's2', 'cfg')
  row = {'mode': 'harmonyview', 'setting': 'harmonyview_s1=2_s2=1', 's1': 2., 's2': 1., 'cfg': math.nan}
  assert (report.label(row), report.label(row, scales=-1)) == ('HarmonyView s1=2 s2=1', 'HarmonyView s1=2')
  assert report.label({'mode': 'other', 'setting': 'x'}) == 'x'


def test_unknown_mode_is_one_line_everywhere():
  for fn in (lambda: modes.mode('classifier'), lambda: SamplerConfig(guidance='classifier'),
             lambda: store.setting_name('classifier', (1,)), lambda: guidance.branch_scales('classifier')):
    with pytest.raises(ValueError) as e:
      fn()
    assert str(e.value) == "unknown guidance mode 'classifier': use 'harmonyview' (Eq. 9), 'cfg' (Eq. 5) or 'none'"


# ----------------------------------------------------------------------------- strips and views

def _png(path, array):
  Image.fromarray(array).save(path)
  return path


def test_strip_round_trip_and_clear_errors(tmp_path):
  rng = np.random.default_rng(0)
  v = rng.integers(0, 256, (views.NUM_VIEWS, 8, 8, 3), dtype=np.uint8)
  path = _png(tmp_path / 's.png', views.join_strip(v))
  np.testing.assert_array_equal(views.read_strip(path, 8), v)
  np.testing.assert_array_equal(views.read_strip(path), v)         # size from the strip's height
  assert views.strip_problem(path, 8) == ''
  assert views.strip_problem(tmp_path / 'nope.png', 8) == 'missing'
  with pytest.raises(views.StripError, match='strip is 128x8, expected 256x16 .16 views of 16x16 left to right.'):
    views.read_strip(path, 16)
  data = path.read_bytes()
  (tmp_path / 't.png').write_bytes(data[:len(data) // 2])
  with pytest.raises(views.StripError, match='strip is unreadable .*truncated'):
    views.read_strip(tmp_path / 't.png', 8)
  assert '\n' not in views.strip_problem(tmp_path / 't.png', 8)
  np.testing.assert_array_equal(views.to_uint8(np.float32([-2., -1., 0., 1.])), [0, 0, 127, 255])


# ----------------------------------------------------------------------------- the sharded batch runner

def test_run_batches_pads_shards_and_keeps_unit_order():
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  calls = []

  def fn(x):
    calls.append(x.shape)
    return x * 2

  units = list(range(5))
  out = list(parallel.run_batches(fn, units, 2, lambda chunk: [np.float32(chunk)], mesh))
  assert calls == [(2,)] * 3                                  # the last batch is padded to the same shape
  assert [c for c, _, _ in out] == [[0, 1], [2, 3], [4]]
  np.testing.assert_array_equal(np.concatenate([o for _, o, _ in out]), np.float32(units) * 2)


def test_batch_arrays_are_the_samplers_inputs():
  img = np.zeros((4, 4, 3), np.float32)
  arrays = batch_arrays(7, [(img, 0.5, 11, 0, (2., 1.)), (img + 1, 0.25, 11, 1, (2., 1.))])
  assert [a.shape for a in arrays[:2]] + [arrays[3].shape] == [(2, 4, 4, 3), (2,), (2, 2)]
  assert arrays[1].dtype == arrays[3].dtype == np.float32
  np.testing.assert_array_equal(arrays[2], instance_keys(7, [11, 11], [0, 1]))


# ----------------------------------------------------------------------------- progress bars

class _Bar:
  def __init__(self):
    self.n = 0

  def update(self, k):
    self.n += k


def test_step_bar_belongs_to_the_run_that_shows_it():
  progress = pipeline.StepProgress()
  progress(0)                                  # no run: the step goes nowhere
  a, b = _Bar(), _Bar()
  with progress.showing(a):
    progress(0)
    progress(1)
    progress(1)                                # another device shard's callback: the bar only moves forward
    with progress.showing(b):
      progress(0)
    progress(2)
  progress(5)
  assert (a.n, b.n) == (3, 1)


def test_progress_bars_are_closed_when_the_run_fails(monkeypatch):
  made = []

  class Bar(_Bar):
    closed = False

    def __init__(self, **kw):
      super().__init__()
      made.append(self)

    def close(self):
      self.closed = True

  monkeypatch.setattr(pipeline, 'tqdm', lambda **kw: Bar(**kw))

  def fn():
    pass
  fn.step_progress = pipeline.StepProgress()
  with pytest.raises(RuntimeError):
    with pipeline.progress_bars(fn, 3, 2, show=True) as (_, step_bar):
      assert fn.step_progress._bar is step_bar
      raise RuntimeError('out of memory')
  assert [b.closed for b in made] == [True, True] and fn.step_progress._bar is None
