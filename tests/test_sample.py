"""Sampling job behaviour on the demo's settings with the behaviour tests' random model (tests/small_model.py):
outputs, resume, no recompilation, determinism across batch composition and device count, the memory knobs, and
every bad input -> one clear line, nothing partial."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import parity as P
import small_model
from hv_jax import cli, parallel, settings
from hv_jax.models.config import ModelConfig
from hv_jax.sampling import pipeline
from hv_jax.sampling.sampler import Sampler, SamplerConfig, instance_keys

DEMO = P.ROOT / 'hv_jax' / 'assets' / 'demo' / 'bell'
STEPS = 2


def _config(tmp_path, **kw):
  """configs/demo.py's settings (SampleSettings) on the behaviour tests' model (tests/small_model.py), at STEPS
  steps into tmp_path/out, with `kw` changed."""
  demo = settings.from_dict(pipeline.SampleSettings, cli.load_config(P.ROOT / 'configs' / 'demo.py').to_dict())
  return dataclasses.replace(demo, **{'output_dir': str(tmp_path / 'out'), 'sample_steps': STEPS, 'progress': False,
                                      'model': str(small_model.PATH), **kw})


def _outputs(d):
  d = pathlib.Path(d)
  return sorted(str(p.relative_to(d)) for p in d.rglob('*') if p.is_file()) if d.exists() else []


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  """The demo sampled once for this module: (folder holding out/bell, the run's manifests)."""
  root = tmp_path_factory.mktemp('demo')
  return root, pipeline.run(_config(root))


@pytest.fixture
def finished(tmp_path, demo_run):
  """A private copy of the finished demo output (2 instances, 2 steps)."""
  shutil.copytree(demo_run[0] / 'out', tmp_path / 'out')
  return tmp_path


def test_demo_run_writes_strips_grid_manifest_and_resumes(finished, demo_run):
  c = _config(finished)
  manifests = demo_run[1]
  out = pathlib.Path(c.output_dir) / 'bell'
  assert _outputs(out) == ['0.png', '1.png', 'grid.png', 'manifest.json']
  s = ModelConfig.tiny().image_size
  assert Image.open(out / '0.png').size == (16 * s, s)
  assert Image.open(out / 'grid.png').size == (16 * s, 2 * s)
  m = json.loads((out / 'manifest.json').read_text())
  assert m['model'].startswith('RANDOM WEIGHTS') and m['scales'] == [2.0, 1.0] and m['seed'] == c.seed
  assert manifests['bell']['sampler']['steps'] == STEPS
  assert m['complete'] and m['instances'] == [0, 1] and m['settings']['timesteps'] == [1, 501]
  assert m['settings']['input_sha256'] == pipeline.digest.file_sha256(DEMO / '000.png')
  assert m['lowering'] == {'conv': 'xla', 'attn': 'reference', 'im2col_max_pixels': 16}   # provenance (the model's)
  assert 'lowering' not in m['settings']
  # an RGBA input keeps the original's path: its own alpha, crop_size, no cut-out file, the same settings keys
  assert m['matting'] == 'alpha' and m['settings']['crop_size'] == -1 and 'matting' not in m['settings']
  first = np.asarray(Image.open(out / '1.png'))
  # A rerun samples nothing; after losing one instance, only that one is redone, identically. A truncated
  # strip (a kill during a non-atomic copy, a full disk) is not a finished one.
  mtime0 = (out / '0.png').stat().st_mtime_ns
  data = (out / '1.png').read_bytes()
  (out / '1.png').write_bytes(data[:len(data) // 2])
  pipeline.run(c)
  assert (out / '0.png').stat().st_mtime_ns == mtime0
  np.testing.assert_array_equal(np.asarray(Image.open(out / '1.png')), first)
  assert json.loads((out / 'manifest.json').read_text())['complete']


def _snapshot(d):
  return {p: (pathlib.Path(d, p).read_bytes(), pathlib.Path(d, p).stat().st_mtime_ns) for p in _outputs(d)}


@pytest.mark.parametrize('field,value,named', [
    ('seed', 7, 'seed'), ('s1', 1.5, 'scales'), ('eta', 0.5, 'eta'), ('sample_steps', 4, 'sample_steps'),
    ('elevation', 20.0, 'elevation_deg'), ('guidance', 'cfg', 'guidance'), ('latent', 'mode', 'latent'),
    ('ddim_spacing', 'uniform_exact', None)])
def test_rerun_with_other_settings_is_refused_and_changes_nothing(finished, field, value, named):
  c = _config(finished, **{field: value})
  before = _snapshot(c.output_dir)
  if named is None:   # 'uniform_exact' gives the same two timesteps as the original for 2 steps: the same strips
    pipeline.run(c)
    assert _snapshot(c.output_dir) == before
    return
  with pytest.raises(pipeline.UserError) as e:
    pipeline.run(c)
  msg = str(e.value)
  assert '\n' not in msg and 'holds instances made with other settings' in msg and named in msg
  assert 'use another output_dir' in msg
  assert _snapshot(c.output_dir) == before


def test_a_plain_photo_is_matted_cropped_and_its_cutout_kept(tmp_path):
  """A JPEG on white (no alpha): matted ('plain'), framed with photo_crop_size, the cut-out the model saw
  saved as input_rgba.png and recorded (by hash) in the settings; a rerun samples nothing."""
  rgba = np.asarray(Image.open(DEMO / '000.png').convert('RGBA'))
  a = rgba[..., 3:] / np.float32(255)
  Image.fromarray((rgba[..., :3] * a + 255 * (1 - a)).round().astype(np.uint8)).save(tmp_path / 'bell.jpg',
                                                                                     quality=95)
  c = _config(tmp_path, input=str(tmp_path / 'bell.jpg'))
  m = pipeline.run(c)['bell']
  out = pathlib.Path(c.output_dir) / 'bell'
  assert _outputs(out) == ['0.png', '1.png', 'grid.png', 'input_rgba.png', 'manifest.json']
  assert m['matting'] == 'plain' and m['settings']['matting'] == 'plain' and m['settings']['crop_size'] == 200
  cut = np.asarray(Image.open(out / 'input_rgba.png'))
  assert cut.shape == (256, 256, 4)
  assert m['settings']['cutout_sha256'] == pipeline.digest.arrays_sha256([cut])
  ys, xs = np.nonzero(cut[..., 3])
  assert max(ys.max() - ys.min(), xs.max() - xs.min()) in range(196, 201)     # the object framed at 200 px
  before = _snapshot(c.output_dir)
  pipeline.run(c)
  assert _snapshot(c.output_dir) == before
  # another matte of the same photo is another input to the model: refused, not reused
  with pytest.raises(pipeline.UserError, match=r'other settings \((crop_size|cutout_sha256)'):
    pipeline.run(dataclasses.replace(c, photo_crop_size=180))


def test_rerun_with_another_input_image_is_refused(finished):
  img = np.asarray(Image.open(DEMO / '000.png')).copy()
  img[0, 0, :3] ^= 1     # one pixel of another input with the same name
  (finished / 'bell').mkdir()
  Image.fromarray(img).save(finished / 'bell' / '000.png')
  c = _config(finished, input=str(finished / 'bell'))
  before = _snapshot(c.output_dir)
  with pytest.raises(pipeline.UserError, match=r'other settings \(input_sha256'):
    pipeline.run(c)
  assert _snapshot(c.output_dir) == before


def test_rerun_that_changes_only_memory_knobs_reuses_the_strips(finished):
  c = _config(finished, batch_view_num=8, decode_chunk=2, sample_num=1)
  before = _snapshot(c.output_dir)
  manifests = pipeline.run(c)
  assert _snapshot(c.output_dir) == before and manifests['bell']['instances'] == [0, 1]


@pytest.mark.parametrize('case', ['no_manifest', 'bad_manifest'])
def test_strips_of_unknown_settings_are_refused(finished, case):
  c = _config(finished)
  manifest = pathlib.Path(c.output_dir) / 'bell' / 'manifest.json'
  if case == 'no_manifest':
    manifest.unlink()
  else:
    manifest.write_text('{"input": "bell"')
  before = _snapshot(c.output_dir)
  with pytest.raises(pipeline.UserError) as e:
    pipeline.run(c)
  assert '\n' not in str(e.value) and ('no manifest.json' in str(e.value) or 'unreadable' in str(e.value))
  assert _snapshot(c.output_dir) == before


def test_a_strip_changed_after_the_run_is_sampled_again(finished, caplog):
  c = _config(finished)
  strip = pathlib.Path(c.output_dir) / 'bell' / '0.png'
  good = strip.read_bytes()
  img = np.asarray(Image.open(strip)).copy()
  img[0, 0] ^= 255
  Image.fromarray(img).save(strip)      # a readable strip of the right size, but not the one sampled
  pipeline.run(c)
  assert strip.read_bytes() == good


def _demo_sampler():
  """The jitted sampler of the demo job (`demo_run`): the same model config, sampler config, devices and
  progress setting, so `compiled_sampler` hands back the function that run compiled (one compile for both)."""
  c = _config(pathlib.Path('/tmp'))
  cfg = pipeline.resolve_weights(c).model_config
  return cfg, pipeline.compiled_sampler(cfg, c.sampler_config(), tuple(jax.local_devices()[:1]),
                                        bool(c.progress))


def _as_the_job_calls(fn, params, *batch, eta):
  """fn(params, *batch, eta) with the arguments placed as the job places them (params replicated, batch arrays
  sharded over 'data', eta a jax scalar): their placement is part of jit's cache key, so this reuses the
  job's compile instead of compiling the sampler again."""
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  return fn(jax.device_put(params, parallel.replicated(mesh)), *parallel.shard_batch(list(batch), mesh),
            jnp.float32(eta))


def test_new_images_seeds_and_scales_do_not_recompile():
  cfg, fn = _demo_sampler()
  from hv_jax.models.init import random_params
  params = random_params(cfg, 0)
  rng = np.random.default_rng(0)
  sizes = []
  for seed, scales, eta in ((0, (2., 1.), 1.), (7, (1.5, 0.5), 0.5), (9, (0., 3.), 0.)):
    img = rng.uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
    out = _as_the_job_calls(fn, params, img, np.float32([0.5]), np.asarray(instance_keys(seed, [0], [0])),
                            np.float32([scales]), eta=eta)
    chex.assert_tree_all_finite(out)
    sizes.append(fn._cache_size())
  assert sizes[1:] == sizes[:1] * 2, sizes     # compiled once, reused for new images, seeds, scales, eta


_MULTI_DEVICE = textwrap.dedent('''
    import json, sys, numpy as np, jax
    from hv_jax.data import views as views_lib
    from hv_jax.sampling import pipeline
    from hv_jax.sampling.sampler import SamplerConfig, instance_keys
    from hv_jax.models.config import ModelConfig
    from hv_jax.models.init import random_params
    assert jax.device_count() == 8, jax.devices()
    cfg = ModelConfig.from_json(open(sys.argv[1]).read())     # tests/small_model.py
    params = random_params(cfg, 0)
    sconf = SamplerConfig(steps=%d)
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
    # two inputs, four instances each (as a study batches them)
    img = np.repeat(inputs[:2], 4, axis=0)
    ids, inst = [0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 3] * 2
    elev = np.float32([0.5] * 4 + [0.2] * 4)
    scales = np.tile(np.float32([[2, 1]]), (8, 1))
    one_device = pipeline.compiled_sampler(cfg, sconf, tuple(jax.devices()[:1]))
    one = np.asarray(one_device(params, img, elev, np.asarray(instance_keys(5, ids, inst)), scales, np.float32(1)))
    eight = pipeline.compiled_sampler(cfg, sconf, tuple(jax.devices()))(
        params, img, elev, np.asarray(instance_keys(5, ids, inst)), scales, np.float32(1))
    assert len(eight.sharding.device_set) == 8
    u1, u8 = views_lib.to_uint8(one), views_lib.to_uint8(eight)
    # the same instances in another call of the same size: rows reversed, the last one another input (the
    # same compile: an instance must not depend on what shares its call)
    order = np.arange(8)[::-1].copy()
    img2, elev2 = img[order].copy(), elev[order].copy()
    ids2, inst2 = [ids[i] for i in order], [inst[i] for i in order]
    img2[7], elev2[7], ids2[7], inst2[7] = inputs[2], 0.9, 2, 5
    mixed = np.asarray(one_device(params, img2, elev2, np.asarray(instance_keys(5, ids2, inst2)), scales,
                                  np.float32(1)))
    print(json.dumps({'max_abs': float(np.abs(one - np.asarray(eight)).max()),
                      'uint8_mismatch_fraction': float((u1 != u8).mean()),
                      'composition_max_abs': float(np.abs(mixed[:7] - one[order[:7]]).max()),
                      'instances_min_diff': float(min(np.abs(one[i] - one[i + 1]).max() for i in (0, 1, 2, 4, 5, 6))),
                      'compiles_one_device': one_device._cache_size()}))
''' % STEPS)


@pytest.fixture(scope='module')
def multi_device():
  """One subprocess with 8 CPU devices: the sampler of the behaviour tests' model (tests/small_model.py) on 1
  device and on 8, and on 1 device again with another batch composition (the same compile)."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu',
             PYTHONPATH=str(P.ROOT))
  r = subprocess.run([sys.executable, '-c', _MULTI_DEVICE, str(small_model.PATH)], capture_output=True, text=True,
                     env=env, timeout=1200)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


def test_same_seeds_same_images_on_one_and_eight_devices(multi_device):
  res = multi_device
  assert res['max_abs'] < 1e-4, res
  assert res['uint8_mismatch_fraction'] < 1e-3, res


def test_instance_does_not_depend_on_batch_composition(multi_device):
  res = multi_device
  assert res['compiles_one_device'] == 1, res            # both compositions ran the same compiled sampler
  assert res['composition_max_abs'] < 1e-4, res          # same instances, other neighbours and rows
  assert res['instances_min_diff'] > 1e-2, res           # different instances of one input differ


# ----------------------------------------------------------------------------- bad input

def _rgb_png(path):
  Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(path)
  return str(path)


@pytest.mark.parametrize('case,needle', [
    ('missing', 'not found'),
    ('not_image', 'not an image'),
    ('no_alpha', 'has no alpha channel'),
    ('no_foreground', 'no foreground found'),
    ('elevation', 'elevation must be in [-10, 40] degrees'),
    ('guidance', 'unknown guidance mode'),
    ('unwritable', 'not writable'),
    ('no_checkpoint', 'syncdreamer-pretrain.ckpt'),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, case, needle):
  kw = {}
  if case == 'missing':
    kw['input'] = str(tmp_path / 'nope.png')
  elif case == 'not_image':
    (tmp_path / 'text.png').write_text('hello')
    kw['input'] = str(tmp_path / 'text.png')
  elif case == 'no_alpha':              # matting 'alpha' asks for the image's own mask
    kw['input'], kw['matting'] = _rgb_png(tmp_path / 'rgb.png'), 'alpha'
  elif case == 'no_foreground':         # 'auto' mattes an RGB image: a flat grey one has no object
    kw['input'] = _rgb_png(tmp_path / 'rgb.png')
  elif case == 'elevation':
    kw['elevation'] = 60.0
  elif case == 'guidance':
    kw['guidance'] = 'classifier'
  elif case == 'unwritable':
    (tmp_path / 'file').write_text('x')
    kw['output_dir'] = str(tmp_path / 'file' / 'sub')
  elif case == 'no_checkpoint':
    kw['checkpoint'] = ''
  c = _config(tmp_path, **kw)
  with pytest.raises(pipeline.UserError) as e:
    pipeline.run(c)
  assert needle in str(e.value) and '\n' not in str(e.value)
  assert not os.path.exists(c.output_dir)      # output folders are made only when there is a file to write


@pytest.mark.parametrize('field,value,needle', [
    ('eta', float('nan'), '--config.eta=nan: must be a finite number'),
    ('eta', -0.5, '--config.eta=-0.5: must be >= 0'),
    ('s1', float('inf'), '--config.s1=inf: must be a finite number'),
    ('s2', float('nan'), '--config.s2=nan'),
    ('cfg_scale', float('-inf'), '--config.cfg_scale=-inf'),
    ('uc2_concat_scale', float('nan'), '--config.uc2_concat_scale=nan'),
    ('elevation', float('nan'), 'elevation must be a finite number of degrees, got nan'),
    ('elevation', 41.0, 'elevation must be in [-10, 40] degrees, got 41.0'),
    ('seed', -1, '--config.seed=-1: must be in [0, 4294967295]'),
    ('sample_num', 0, '--config.sample_num=0: must be >= 1'),
    ('sample_steps', 7, 'nearest: 5 and 8'),
    ('sample_steps', 3, 'reaches t=1000'),
    ('sample_steps', 1000, 'DDIM steps must be in [1, 999]'),
    ('batch_view_num', 5, '--config.batch_view_num=5: must divide the 16 rows'),
    ('batch_view_num', -1, '--config.batch_view_num=-1: must be >= 0'),
    ('decode_chunk', 3, '--config.decode_chunk=3: must divide the 16 views'),
    ('per_device_batch', 0, '--config.per_device_batch=0: must be >= 1'),
    ('crop_size', 0, '--config.crop_size=0'),
    ('ddim_spacing', 'leading', 'unknown DDIM spacing'),
])
def test_bad_settings_are_one_line_before_any_work(tmp_path, field, value, needle):
  c = _config(tmp_path, **{field: value})
  with pytest.raises(pipeline.UserError) as e:
    pipeline.run(c)
  assert needle in str(e.value) and '\n' not in str(e.value), str(e.value)
  assert not os.path.exists(c.output_dir)


def test_a_failure_while_sampling_leaves_no_folder(tmp_path, monkeypatch):
  def failing(*args, **kw):
    def fn(*a):
      raise RuntimeError('RESOURCE_EXHAUSTED: out of memory while compiling')
    return fn
  monkeypatch.setattr(pipeline, 'compiled_sampler', failing)
  c = _config(tmp_path)
  with pytest.raises(RuntimeError, match='RESOURCE_EXHAUSTED'):
    pipeline.run(c)
  assert not os.path.exists(c.output_dir)


def test_exact_schedule_runs_the_count_asked_and_the_manifest_says_which(tmp_path):
  c = _config(tmp_path, sample_steps=3, ddim_spacing='uniform_exact')
  c.validate()
  sconf = c.sampler_config()
  assert Sampler(ModelConfig.tiny(), sconf).tables.num_steps == 3     # the scan runs 3 steps
  weights = pipeline.resolve_weights(c)
  job = pipeline.load_inputs(c)[0]
  recorded = pipeline.settings_of(c, job, weights, sconf, c.scales)
  assert recorded['timesteps'] == [1, 334, 667] and recorded['sample_steps'] == 3


def test_the_manifest_records_the_lowering_the_demo_runs_on_cpu(tmp_path):
  """configs/demo.py's tiny model leaves the lowering to the backend: its manifest records the CPU default."""
  c = _config(tmp_path, model='tiny')
  weights = pipeline.resolve_weights(c)
  job = pipeline.load_inputs(c)[0]
  sconf = c.sampler_config()
  m = pipeline.manifest_of(c, job, pipeline.settings_of(c, job, weights, sconf, c.scales), weights, sconf)
  assert m['lowering'] == {'conv': 'tuned', 'attn': 'fast', 'im2col_max_pixels': 16}   # provenance (CPU default)
  assert 'lowering' not in m['settings']


def test_the_lowering_is_a_setting_of_the_run_and_changes_no_checked_setting(tmp_path):
  """--config.conv_impl / attn_impl override the model config's lowering (also a JSON's); '' keeps it. A rerun
  under another lowering is the same run (settings_of), its manifest records the one it ran."""
  runs = {}                                   # the behaviour tests' model JSON sets the literal lowering itself
  for conv, attn in (('', ''), ('tuned', ''), ('', 'fast'), ('auto', 'auto')):
    c = _config(tmp_path, conv_impl=conv, attn_impl=attn)
    c.validate()
    weights = pipeline.resolve_weights(c)
    job = pipeline.load_inputs(c)[0]
    sconf = c.sampler_config()
    settings = pipeline.settings_of(c, job, weights, sconf, c.scales)
    m = pipeline.manifest_of(c, job, settings, weights, sconf)
    runs[conv, attn] = (settings, m['lowering'])
  assert runs['', ''][1] == {'conv': 'xla', 'attn': 'reference', 'im2col_max_pixels': 16}       # the JSON's
  assert runs['tuned', ''][1] == {'conv': 'tuned', 'attn': 'reference', 'im2col_max_pixels': 16}
  assert runs['', 'fast'][1] == {'conv': 'xla', 'attn': 'fast', 'im2col_max_pixels': 16}
  assert runs['auto', 'auto'][1] == {'conv': 'tuned', 'attn': 'fast', 'im2col_max_pixels': 16}  # CPU default
  assert all(settings == runs['', ''][0] for settings, _ in runs.values())
  for field, bad in (('conv_impl', 'native'), ('attn_impl', 'flash')):
    with pytest.raises(pipeline.UserError, match=f"^--config.{field}='{bad}': use one of"):
      _config(tmp_path, **{field: bad}).validate()


@pytest.mark.skipif(not P.available(), reason='needs parity fixtures')
def test_checkpoint_config_mismatch(tmp_path):
  pytest.importorskip('torch')
  from hv_jax import checkpoint
  ck = tmp_path / 'tiny_ckpt'
  checkpoint.save(str(ck), P.converted_params(), P.model_config(), {})
  c = _config(tmp_path, checkpoint=str(ck), model='full')
  with pytest.raises(pipeline.UserError, match='does not match'):
    pipeline.run(c)
  assert not _outputs(c.output_dir)


def test_cli_reports_one_line_without_traceback(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(P.ROOT))
  r = subprocess.run([sys.executable, '-m', 'hv_jax.sample', '--config=configs/demo.py',
                      f'--config.input={tmp_path / "missing.png"}', f'--config.output_dir={tmp_path / "o"}'],
                     capture_output=True, text=True, cwd=P.ROOT, env=env, timeout=600)
  assert r.returncode == 2
  assert 'Traceback' not in r.stderr
  assert [l for l in r.stderr.splitlines() if l.startswith('error: ')] == [
      f'error: input not found: {tmp_path / "missing.png"}']


def test_memory_knobs_keep_the_result():
  """view chunks (sequential lax.map) and remat change memory, not numbers; bfloat16 stays close."""
  cfg = small_model.SMALL
  from hv_jax.models.init import random_params
  from hv_jax.sampling.sampler import Condition
  params = random_params(cfg, 2)
  rng = np.random.default_rng(1)
  x_t = jnp.asarray(rng.normal(size=(2, 16, 8, 8, 4)), jnp.float32)
  cond = Condition(clip_embed=jnp.asarray(rng.normal(size=(2, 1, 768)), jnp.float32),
                   x_input=jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32),
                   v_embed=jnp.asarray(rng.normal(size=(2, 16, 4)), jnp.float32))
  t = jnp.asarray([501, 501])
  scales = jnp.asarray([[2., 1.], [1., 0.5]])

  def eps(**kw):
    s = Sampler(cfg, SamplerConfig(steps=STEPS, **kw))
    return jax.jit(s.guided_eps)(params, x_t, t, cond, scales)

  ref = eps()
  scale = float(jnp.abs(ref).max())
  # different batch shapes round differently (random untrained weights amplify it): float32 noise level
  chex.assert_trees_all_close(eps(view_chunk=8, remat=True), ref, atol=1e-4 * scale, rtol=0)
  low = eps(dtype='bfloat16')
  assert low.dtype == jnp.float32
  assert float(jnp.abs(low - ref).max()) < 0.1 * scale


def test_a_conversion_cache_of_another_checkpoint_is_never_used(tmp_path):
  ckpt = tmp_path / 'model.ckpt'
  ckpt.write_bytes(b'weights v1')
  cache = tmp_path / 'model.ckpt.hv_jax'
  cache.mkdir()
  st = ckpt.stat()
  record = {'ckpt': str(ckpt), 'ckpt_sha256': pipeline.digest.file_sha256(ckpt), 'ckpt_size': st.st_size,
            'ckpt_mtime_ns': st.st_mtime_ns}
  (cache / 'conversion.json').write_text(json.dumps({'source': record}))
  assert pipeline.convert_cached(ckpt, None, None) == cache                 # same size and mtime
  os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
  assert pipeline.convert_cached(ckpt, None, None) == cache                 # touched, same content
  ckpt.write_bytes(b'weights v2')                                          # another checkpoint, same path
  with pytest.raises(pipeline.UserError, match=r'holds the conversion of another checkpoint .*delete it, or set '
                                               r'--config.checkpoint_cache=DIR'):
    pipeline.convert_cached(ckpt, None, None)
  (cache / 'conversion.json').unlink()
  with pytest.raises(pipeline.UserError, match='no readable conversion.json'):
    pipeline.convert_cached(ckpt, None, None)
