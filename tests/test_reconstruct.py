"""NeuS stage: views and rays as the original builds them, batching, resume, the CLI and its bad inputs."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import parity as P
from hv_jax.neus import data as neus_data
from hv_jax.neus import fields, mesh, train
from hv_jax.neus.fields import ColorConfig, GridSDFConfig, NeuSConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GSO = os.path.join(ROOT, 'tests', 'fixtures', 'gso')

TINY = NeuSConfig(sdf=GridSDFConfig(resolutions=(8, 16), features=2, d_hidden=16, n_layers=1, d_out=4),
                  color=ColorConfig(d_feature=3, d_hidden=16, n_layers=1, multires_view=2, weight_norm=False),
                  n_samples=8, n_importance=8, up_sample_steps=2, clip_to_cube=True)


def disc_views(tmp_path, alpha=True, size=256):
  """16 RGBA views of a red disc (enough for loading, batching and a few steps)."""
  d = tmp_path / 'views'
  d.mkdir()
  yy, xx = np.mgrid[:size, :size]
  a = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 5) ** 2).astype(np.uint8) * 255
  for i in range(16):
    img = np.zeros((size, size, 4), np.uint8)
    img[..., 0] = 200
    img[..., 1] = 10 * i
    img[..., 3] = a
    if not alpha:
      rgb = img[..., :3].astype(np.float32) * (a[..., None] / 255) + 255 * (1 - a[..., None] / 255)
      Image.fromarray(rgb.astype(np.uint8), 'RGB').save(d / f'{i:03d}.png')
    else:
      Image.fromarray(img, 'RGBA').save(d / f'{i:03d}.png')
  return d


def test_rays_match_the_original_construction():
  torch = pytest.importorskip('torch')
  import torch.nn.functional as F
  Ks, poses, _ = neus_data.default_cameras()
  h = w = 256
  # RendererTrainer._construct_ray_batch, transcribed
  K = torch.from_numpy(Ks)
  P = torch.from_numpy(poses)
  coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij'), -1)[:, :, (1, 0)]
  coords = coords.float()[None].repeat(16, 1, 1, 1).reshape(16, h * w, 2)
  coords = torch.cat([coords, torch.ones(16, h * w, 1)], 2)
  rays_d = coords @ torch.inverse(K).permute(0, 2, 1)
  R, t = P[:, :, :3], P[:, :, 3:]
  rays_d = F.normalize(rays_d @ R, dim=-1)
  rays_o = (-R.permute(0, 2, 1) @ t).permute(0, 2, 1).repeat(1, h * w, 1)
  o, d = neus_data.make_rays(Ks, poses, h, w)
  np.testing.assert_allclose(o, rays_o.reshape(-1, 3).numpy(), atol=1e-6)
  np.testing.assert_allclose(d, rays_d.reshape(-1, 3).numpy(), atol=1e-6)


def test_strip_and_folder_load_the_same(tmp_path):
  folder = neus_data.load_views(disc_views(tmp_path))
  assert folder.mask_source == 'alpha' and folder.rgb.shape == (16, 256, 256, 3)
  neus_data.write_strip(folder, tmp_path / 'strip.png')
  strip = neus_data.load_views(tmp_path / 'strip.png')
  np.testing.assert_allclose(strip.rgb, folder.rgb, atol=1 / 255)
  np.testing.assert_array_equal(strip.mask, folder.mask)


def test_views_without_alpha_are_matted_and_the_white_rule_stays_by_name(tmp_path):
  d = disc_views(tmp_path, alpha=False)
  yy, xx = np.mgrid[:256, :256]
  disc = ((yy - 128) ** 2 + (xx - 128) ** 2) < (256 / 5) ** 2
  v = neus_data.load_views(d)                              # auto: no alpha -> the plain matte of each view
  assert v.mask_source == 'plain'
  assert ((v.mask > 0.5) == disc).mean() > 0.995
  w = neus_data.load_views(d, matting='white')             # the original's pseudo_fg rule, by name
  assert w.mask_source == 'white-background'
  assert w.mask[0, 128, 128] == 1 and w.mask[0, 0, 0] == 0
  with pytest.raises(neus_data.ViewsError, match='no usable alpha channel'):
    neus_data.load_views(d, matting='alpha')
  with pytest.raises(neus_data.ViewsError, match='unknown matting'):
    neus_data.load_views(d, matting='carvekit')


def test_batches_are_a_function_of_seed_and_step_and_walk_passes_like_the_original():
  total, num = 1000, 300
  fg = np.arange(0, 1000, 7)
  a = neus_data.batch_indices(5, 1, total, num, fg, 20)
  np.testing.assert_array_equal(a, neus_data.batch_indices(5, 1, total, num, fg, 20))
  assert len(a) == num + 20 and np.all(np.isin(a[num:], fg))
  # the original: take [i, i+num), i += num, reshuffle when i + num >= total -> 3 blocks per pass of 1000
  firsts = [neus_data.batch_indices(s, 1, total, num, fg, 0) for s in range(3)]
  assert len(np.unique(np.concatenate(firsts))) == 3 * num          # disjoint within a pass
  assert not np.array_equal(neus_data.batch_indices(3, 1, total, num, fg, 0)[:num], firsts[0])


def test_bad_views_are_one_line_errors(tmp_path):
  d = disc_views(tmp_path)
  os.remove(d / '007.png')
  with pytest.raises(neus_data.ViewsError, match='missing view.*007.png'):
    neus_data.load_views(d)
  Image.new('RGB', (512, 256), 'white').save(tmp_path / 'small.png')
  with pytest.raises(neus_data.ViewsError, match='expected a 4096x256 strip'):
    neus_data.load_views(tmp_path / 'small.png')
  Image.new('RGBA', (4096, 256), (255, 0, 0, 0)).save(tmp_path / 'empty.png')
  with pytest.raises(neus_data.ViewsError, match='mask is empty'):
    neus_data.load_views(tmp_path / 'empty.png')
  (tmp_path / 'text.png').write_text('not an image')
  with pytest.raises(neus_data.ViewsError, match='not a readable image'):
    neus_data.load_views(tmp_path / 'text.png')


def test_grid_field_starts_as_a_sphere_with_unit_gradient():
  p = fields.init_params(jax.random.PRNGKey(0), TINY)
  x = np.array([[0.1, 0.2, -0.3], [0.0, 0.45, 0.1]], np.float32)
  out, g = fields.sdf_and_gradient(p['sdf'], x, TINY.sdf)
  np.testing.assert_allclose(out[:, 0], np.linalg.norm(x, axis=-1) - 0.5, atol=1e-3)
  np.testing.assert_allclose(np.linalg.norm(g, axis=-1), 1.0, atol=1e-2)


def _fit(views_dir, ckpt_dir, steps, on_log=None, seed=3, data_identity=None, log_every=2):
  data = neus_data.ray_dataset(neus_data.load_views(views_dir))
  tc = train.TrainConfig(base_lr=1e-3, total_steps=steps, warm_up_steps=2, decay_interval=4, grid_lr_scale=10.0)
  lc = train.LoopConfig(batch_num=64, fg_num=16, seed=seed, save_every=4, log_every=log_every)
  return train.fit(data, TINY, tc, lc, checkpoint_dir=str(ckpt_dir) if ckpt_dir else '', progress=False,
                   on_log=on_log, data_identity=data_identity)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """(views folder, params, history) of one uninterrupted 12-step fit (checkpoints every 4 steps, logs every 2:
  2 steps per call)."""
  root = tmp_path_factory.mktemp('fit')
  views = disc_views(root)
  return (views,) + tuple(_fit(views, root / 'a', 12))


def test_chunk_lengths_change_no_number(uninterrupted):
  """fit runs up to STEPS_PER_CALL steps per compiled call, in chunks that end at log rows and checkpoints: every
  chunking runs one program and gives the same params and logged rows, bit for bit."""
  views, two, hist_two = uninterrupted                          # chunks of 2 steps
  compiled = train.train_steps_indexed._cache_size()
  one, hist_one = _fit(views, None, 12, log_every=1)             # chunks of 1
  three, _ = _fit(views, None, 12, log_every=3)                  # 3, 1, 2, 2, 1, 3 (checkpoints every 4)
  assert train.train_steps_indexed._cache_size() == compiled     # no new program for other chunk lengths
  for other in (one, three):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), other, two)
  drop = lambda row: {k: v for k, v in row.items() if k != 'seconds'}
  assert [drop(r) for r in hist_two] == [drop(r) for r in hist_one if r['step'] % 2 == 0]


def test_an_interrupted_fit_resumes_to_the_same_params(tmp_path, uninterrupted):
  views, full, hist = uninterrupted
  assert [r['step'] for r in hist] == [2, 4, 6, 8, 10, 12] and np.isfinite(hist[-1]['loss'])

  class Stop(Exception):
    pass

  def stop_at_6(row):
    if row['step'] == 6:
      raise Stop()
  with pytest.raises(Stop):
    _fit(views, tmp_path / 'b', 12, on_log=stop_at_6)      # checkpoint at step 4 survives
  resumed, hist_b = _fit(views, tmp_path / 'b', 12)
  assert hist_b[0]['step'] == 6                      # resumed after step 4
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), full, resumed)
  # identity.json beside the checkpoints: a resume with other settings or another input is refused before any
  # step (checked here, where checkpoints exist already, to compile nothing more)
  ckpt = tmp_path / 'b'
  assert sorted(p.name for p in ckpt.iterdir()) == ['12', 'identity.json']
  with pytest.raises(train.CheckpointMismatch, match=r'holds checkpoints of another input/settings \(seed\)'):
    _fit(views, ckpt, 12, seed=4)
  with pytest.raises(train.CheckpointMismatch, match=r'another input/settings \(input\)'):
    _fit(views, ckpt, 12, data_identity={'input_sha256': 'another'})
  (ckpt / 'identity.json').unlink()                  # checkpoints of an older version: cannot be checked
  with pytest.raises(train.CheckpointMismatch, match='without a record of their input and settings'):
    _fit(views, ckpt, 12)
  assert sorted(p.name for p in ckpt.iterdir()) == ['12']


def test_mesh_of_the_initial_sphere_and_ply(tmp_path):
  p = fields.init_params(jax.random.PRNGKey(0), TINY)
  v, f, c = mesh.extract_mesh(p, TINY, resolution=48, slab=7)
  r = np.linalg.norm(v, axis=-1)
  assert len(f) > 100 and abs(r.mean() - 0.5) < 0.01 and c.dtype == np.uint8 and c.shape == v.shape
  mesh.write_ply(tmp_path / 'm.ply', v, f, c)
  trimesh = pytest.importorskip('trimesh')
  m = trimesh.load(tmp_path / 'm.ply', process=False)
  np.testing.assert_allclose(m.vertices, v, atol=1e-6)
  np.testing.assert_array_equal(m.faces, f)
  assert m.is_watertight


def test_mirror_top_floor_cuts_the_fill_below_a_centred_box():
  """A box over z in [-0.5, 0.3] (as if the unseen space below a [-0.3, 0.3] object were filled) is cut at
  z = -0.3; a grid whose surface reaches the cube's top, or that has no surface, is left alone."""
  res, bound = 97, 0.6
  ax = np.linspace(-bound, bound, res, dtype=np.float32)
  x, y, z = np.meshgrid(ax, ax, ax, indexing='ij')
  box = lambda lo, hi: np.maximum(np.maximum(np.abs(x), np.abs(y)) - 0.2, np.maximum(lo - z, z - hi))
  u = box(-0.5, 0.3)
  floored, floor = mesh.mirror_top_floor(u, bound)
  assert abs(floor + 0.3) < 1e-6
  v, f = mesh.marching_cubes(floored, bound)
  np.testing.assert_allclose([v[:, 2].min(), v[:, 2].max()], [-0.3, 0.3], atol=1e-6)
  np.testing.assert_allclose(np.ptp(v[:, :2], 0), [0.4, 0.4], atol=1e-6)
  above = ax > -0.29
  np.testing.assert_array_equal(floored[..., above] < 0, u[..., above] < 0)   # only the fill below is cut
  np.testing.assert_array_equal(floored[..., ax >= 0], u[..., ax >= 0])
  for same in (box(-0.5, 0.7), np.ones_like(u)):
    np.testing.assert_array_equal(mesh.mirror_top_floor(same, bound)[0], same)
  p = fields.init_params(jax.random.PRNGKey(0), TINY)
  v, f, c = mesh.mesh_from_grid(p, TINY, u, 'mirror_top', colors=False)
  assert c is None and abs(v[:, 2].min() + 0.3) < 1e-6
  assert abs(mesh.mesh_from_grid(p, TINY, u, 'none', colors=False)[0][:, 2].min() + 0.5) < 1e-6
  with pytest.raises(ValueError, match='mesh floor'):
    mesh.extract_mesh(p, TINY, resolution=8, floor='flat')
  with pytest.raises(ValueError, match='mesh floor'):
    mesh.mesh_from_grid(p, TINY, u, floor='flat')


def neus_fast_config():
  """configs/neus_fast.py's ConfigDict (to change fields as --config.x=... would), loaded by path."""
  from hv_jax import cli
  return cli.load_config(os.path.join(ROOT, 'configs', 'neus_fast.py'))


def settings_of(config):
  """The ReconstructSettings of a ConfigDict, as the command builds them."""
  from hv_jax import settings
  from hv_jax.neus import pipeline
  return settings.from_dict(pipeline.ReconstructSettings, config.to_dict())


def run_cli(*args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', 'hv_jax.reconstruct', *args], capture_output=True, text=True,
                        env=env, cwd=ROOT)


def run_main(*args):
  """hv_jax.reconstruct's main(args) in this process, reported as run_cli reports it (tests/parity.py run_main)."""
  return P.run_main('hv_jax.reconstruct', args)


SHORT, CHAMFER_BOUND, IOU_BOUND = 150, 0.025, 0.7   # measured: 0.0156, 0.878 (0.0158, 0.834 before the floor)

TINY_FLAGS = ['--config=configs/neus_fast.py', '--config.train.total_steps=4', '--config.train.decay_interval=2',
              '--config.train.warm_up_steps=1', '--config.batch_num=64', '--config.fg_num=16',
              '--config.mesh_resolution=32', '--config.progress=False']


def test_cli_bad_inputs_write_nothing(tmp_path):
  d = disc_views(tmp_path)
  os.remove(d / '003.png')
  out = tmp_path / 'out'
  cases = [
      ([f'--config.input={d}'], 'missing view'),
      ([f'--config.input={tmp_path / "nope.png"}'], 'no such file'),
      (['--config.input='], 'no input'),
      ([f'--config.input={d}', '--config.mesh_floor=flat'], "--config.mesh_floor='flat': expected one of"),
  ]
  Image.new('RGBA', (4096, 256), (255, 255, 255, 0)).save(tmp_path / 'empty.png')
  cases.append(([f'--config.input={tmp_path / "empty.png"}'], 'mask is empty'))
  Image.new('RGB', (1024, 256)).save(tmp_path / 'short.png')
  cases.append(([f'--config.input={tmp_path / "short.png"}'], 'strip'))
  for k, (extra, msg) in enumerate(cases):    # the first through `python -m`, the others through main() in process
    r = (run_cli if k == 0 else run_main)(*TINY_FLAGS, f'--config.output_dir={out}', *extra)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith('error: ') and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  good = tmp_path / 'good'
  yy, xx = np.mgrid[:256, :4096]
  disc = (((yy - 128) ** 2 + (xx % 256 - 128) ** 2) < 50 ** 2).astype(np.uint8) * 255   # a red disc in each view
  Image.fromarray(np.dstack([np.full((256, 4096), 255, np.uint8), np.zeros((256, 4096, 2), np.uint8), disc]),
                  'RGBA').save(good.with_suffix('.png'))
  r = run_main(*TINY_FLAGS, f'--config.input={good.with_suffix(".png")}', f'--config.output_dir={blocker}/sub')
  assert r.returncode == 2 and 'not writable' in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_gt_mesh_and_its_rotation_are_checked_before_training(tmp_path):
  """An unreadable GT mesh or an object name without a known GT rotation: one line, before any training
  (no 'neus:' line), no output folder."""
  d = disc_views(tmp_path)                           # folder 'views': not a GSO-eval object
  out = tmp_path / 'out'
  (tmp_path / 'bad.obj').write_text('this is not a mesh\n')
  gt = os.path.join(GSO, 'cream', 'model.obj')
  cases = [
      ([f'--config.gt_mesh={tmp_path / "bad.obj"}', '--config.gt_name=cream'], f'error: gt_mesh {tmp_path / "bad.obj"}: '),
      ([f'--config.gt_mesh={gt}'],
       "error: gt_name: unknown object 'views' (not one of the 30 GSO-eval objects whose GT rotation is known): set "
       '--config.gt_name=OBJECT, or --config.gt_rotation=0 if the GT mesh needs no rotation'),
      ([f'--config.gt_mesh={gt}', '--config.gt_name=Cream'],
       "error: gt_name: unknown object 'Cream': did you mean 'cream'? set --config.gt_name=OBJECT, or "
       '--config.gt_rotation=0 if the GT mesh needs no rotation'),
      ([f'--config.gt_mesh={gt}', '--config.gt_rotation=nan'], 'error: --config.gt_rotation=nan: must be a finite number'),
      (['--config.gt_name=cream'], "error: --config.gt_name names the GT mesh's object: it needs --config.gt_mesh"),
  ]
  for k, (extra, msg) in enumerate(cases):    # the first through `python -m`, the others through main() in process
    r = (run_cli if k == 0 else run_main)(*TINY_FLAGS, f'--config.input={d}', f'--config.output_dir={out}', *extra)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(msg), r.stderr
    assert 'neus:' not in r.stdout and not out.exists()


def test_cli_finished_folder_without_identity_is_refused(tmp_path):
  """metrics.json of an older version records no input hash: it cannot be told apart from another input's."""
  d = disc_views(tmp_path)
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'metrics.json').write_text(json.dumps({'input': str(d), 'config': {}}))
  (out / 'mesh.ply').write_text('ply')
  before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
  r = run_cli(*TINY_FLAGS, f'--config.input={d}', f'--config.output_dir={out}')
  assert r.returncode == 2 and r.stderr.strip() == (
      f'error: {out} holds a reconstruction of an older version, without a record of its input and settings: '
      'use another output_dir or --config.overwrite=True'), r.stderr
  assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_non_finite_or_out_of_range_settings_are_refused(tmp_path):
  from hv_jax.neus import pipeline
  d = disc_views(tmp_path)
  out = tmp_path / 'out'
  for flag, msg in (('--config.train.base_lr=nan', 'error: --config.train.base_lr=nan: must be a finite number'),
                    ('--config.neus.lambda_eikonal_loss=inf',
                     'error: --config.neus.lambda_eikonal_loss=inf: must be a finite number')):
    r = run_main(*TINY_FLAGS, f'--config.input={d}', f'--config.output_dir={out}', flag)
    assert r.returncode == 2 and r.stderr.strip() == msg and not out.exists(), r.stderr
  for field, value, msg in (('train.grid_lr_scale', float('-inf'), 'train.grid_lr_scale=-inf: must be a finite'),
                            ('neus.variance_init', float('nan'), 'neus.variance_init=nan: must be a finite'),
                            ('neus.anneal_end', 0, r'neus.anneal_end=0: must be > 0 \(or < 0: no annealing\)'),
                            ('train.base_lr', 0.0, 'train.base_lr=0.0: must be > 0'),
                            ('train.b2', 1.0, r'train.b2=1.0: must be in \[0, 1\)'),
                            ('neus.up_sample_steps', 5, 'neus.up_sample_steps=5: must be >= 1 and divide '
                                                        'neus.n_importance=24'),
                            ('neus.lambda_mask_loss', -1.0, 'neus.lambda_mask_loss=-1.0: must be >= 0'),
                            ('log_every', 0, 'log_every=0: must be >= 1'),
                            ('seed', -1, r'seed=-1: must be in \[0, 2\^32 - 1\]'),      # was a numpy traceback
                            # network widths the renderer does not fix: refused before any work, not a crash
                            # (math domain error, a shape mismatch) after the views are prepared
                            ('neus.color.d_hidden', -1, 'neus.color.d_hidden=-1: must be >= 1'),
                            ('neus.color.d_in', 8, r'neus.color.d_in=8: must be 9 \(point, view direction'),
                            ('neus.sdf.n_layers', 0, 'neus.sdf.n_layers=0: must be >= 1'),
                            ('neus.color.d_feature', 7, r'neus.color.d_feature=7: must be --config.neus.sdf.d_out - 1'),
                            ('train.total_steps', 10, r'train.total_steps=10: must be >= --config.train.decay_interval')):
    c = neus_fast_config()
    c.input, c.output_dir = str(d), str(out)
    section, _, name = field.rpartition('.')
    setattr(c[section] if section else c, name, value)
    with pytest.raises(pipeline.UserError, match=r'^--config\.' + msg):
      pipeline.run(settings_of(c))
    assert not out.exists()
  c = neus_fast_config()
  c.input, c.output_dir = str(d), str(out)
  s = settings_of(c)
  narrow = fields.SDFConfig(d_hidden=10, d_out=s.neus.color.d_feature + 1)      # the skip input is 39 wide
  with pytest.raises(pipeline.UserError, match=r'^--config\.neus\.sdf: SDFConfig: d_hidden=10 leaves no room'):
    pipeline.run(dataclasses.replace(s, neus=dataclasses.replace(s.neus, sdf=narrow)))
  assert not out.exists()


def test_cli_diverged_training_is_one_line_and_leaves_nothing(tmp_path):
  """A loss that is not finite is never written as a result: one line, and the folder this run created (with
  the diverged checkpoints) is removed."""
  d = disc_views(tmp_path)
  out = tmp_path / 'new' / 'out'
  r = run_cli(*TINY_FLAGS, f'--config.input={d}', f'--config.output_dir={out}', '--config.train.base_lr=1e30',
              '--config.save_every=2', '--config.progress=True')
  assert r.returncode == 2, r.stderr
  # with the progress bar on: the bar is closed first, the error is the last line, whole, and nothing else is
  # printed but the bar's refreshes
  lines = r.stderr.rstrip().split('\n')
  assert lines[-1] == ('error: training diverged by step 4 (loss nan): lower --config.train.base_lr '
                       "(this run's checkpoints were removed)"), r.stderr
  assert all(part.startswith('neus:') for line in lines[:-1] for part in line.split('\r') if part.strip()), r.stderr
  assert not (tmp_path / 'new').exists()


@pytest.mark.parametrize('cfg', [TINY, NeuSConfig(sdf=fields.SDFConfig(d_hidden=64, n_layers=4, skip_in=(2,), d_out=9),
                                                  color=ColorConfig(d_feature=8, d_hidden=16, n_layers=2),
                                                  n_samples=8, n_importance=8, up_sample_steps=2)],
                         ids=['grid', 'mlp'])
def test_chunked_gradient_equals_the_whole_batch(cfg):
  """train.chunks splits the rays for memory; loss, terms and gradient are those of the whole batch."""
  Ks, poses, _ = neus_data.default_cameras()
  o, d = neus_data.make_rays(Ks, poses, 256, 256)
  rng = np.random.default_rng(0)
  idx = rng.choice(len(o), 64, replace=False)
  batch = {'rays_o': o[idx], 'rays_d': d[idx], 'rgb': rng.random((64, 3), np.float32),
           'mask': (rng.random((64, 1)) > 0.5).astype(np.float32)}
  u = rng.random((64, 1), np.float32)
  p = fields.init_params(jax.random.PRNGKey(1), cfg)
  whole = jax.jit(lambda p: train._grads(p, batch, u, 50, cfg, 1))(p)
  chunked = jax.jit(lambda p: train._grads(p, batch, u, 50, cfg, 4))(p)
  np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-5)
  for k in whole[1]:
    np.testing.assert_allclose(chunked[1][k], whole[1][k], rtol=1e-5, atol=1e-7, err_msg=k)
  # float32 rounding order differs (XLA fuses the chunked depth sampling differently); the high-frequency
  # positional-encoding rows of the MLP's first layer are the most sensitive: 1e-4 of the largest gradient
  scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(whole[2]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4 * scale, rtol=1e-4), chunked[2], whole[2])


def test_real_object_shortened_reconstruction(tmp_path):
  """CI-sized real check: the GSO 'cream' box from its 16 GT views, neus_fast shortened to SHORT steps.

  Bounds are set from a measured run with margin (Chamfer 0.0156, IoU 0.878; 0.0158, 0.834 before the
  floor); a broken renderer, loss, ray convention or GT transform lands outside them (the initial sphere
  scores Chamfer 0.080, IoU 0.63).
  """
  pytest.importorskip('trimesh')
  from hv_jax.neus import pipeline
  c = neus_fast_config()
  c.input = os.path.join(GSO, 'cream')
  c.output_dir = str(tmp_path / 'cream')
  c.gt_mesh = os.path.join(GSO, 'cream', 'model.obj')
  c.train.total_steps, c.train.decay_interval, c.train.warm_up_steps = SHORT, SHORT // 2, 10
  c.batch_num, c.fg_num = 512, 128
  c.mesh_resolution, c.vertex_colors, c.progress = 128, False, False
  m = pipeline.run(settings_of(c))
  geo = m['geometry']
  assert geo['name'] == 'cream'
  assert geo['chamfer'] < CHAMFER_BOUND and geo['iou'] > IOU_BOUND, geo
  assert (tmp_path / 'cream' / 'mesh.ply').exists()
  assert m['mesh']['floor'] == 'mirror_top' and (tmp_path / 'cream' / 'mesh_nofloor.ply').exists()
  assert m['geometry_nofloor']['iou'] <= geo['iou'] + 1e-9, (m['geometry_nofloor'], geo)   # cream's fill is cut
  again = pipeline.run(settings_of(c))           # finished output: not redone
  assert again['seconds'] == m['seconds']
  out = tmp_path / 'cream'
  files = lambda: {p: p.stat().st_mtime_ns for p in out.rglob('*') if p.is_file()}
  before = files()
  # the same finished folder asked for with other settings or another input: refused in one line, unchanged
  flags = ['--config=configs/neus_fast.py', f'--config.input={c.input}', f'--config.output_dir={out}',
           f'--config.gt_mesh={c.gt_mesh}', f'--config.train.total_steps={SHORT}',
           f'--config.train.decay_interval={SHORT // 2}', '--config.train.warm_up_steps=10', '--config.batch_num=512',
           '--config.fg_num=128', '--config.mesh_resolution=128', '--config.vertex_colors=False',
           '--config.progress=False']
  r = run_main(*flags)            # the command in process (its `python -m` path: test_cli_bad_inputs_write_nothing)
  assert r.returncode == 0 and 'already reconstructed from the same input and settings' in r.stdout, r.stderr
  r = run_main(*flags, '--config.train.base_lr=0.002')
  assert r.returncode == 2 and r.stderr.strip() == (
      f'error: {out} holds a reconstruction of another input/settings (train.base_lr): use another output_dir '
      'or --config.overwrite=True'), r.stderr
  c.input = os.path.join(GSO, 'bell')
  c.gt_name = 'cream'
  with pytest.raises(pipeline.UserError, match=r'holds a reconstruction of another input/settings \(input\)'):
    pipeline.run(settings_of(c))
  assert files() == before
  # without metrics.json the checkpoints would be resumed: only those of the same input and settings
  os.remove(out / 'metrics.json')
  before = files()
  with pytest.raises(pipeline.UserError, match=r'checkpoints holds checkpoints of another input/settings '
                                               r'\(input\): use another output_dir or --config.overwrite=True'):
    pipeline.run(settings_of(c))
  assert files() == before
