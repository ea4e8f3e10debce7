"""The photo-to-asset command on a small random model (tests/small_model.py): every stage's outputs from a plain
JPEG, the estimated elevation's second round, a rerun that redoes nothing, a changed setting that redoes only its
stage, and bad input as one line with nothing partial."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import parity as P
import small_model
from hv_jax import cli, digest, settings
from hv_jax.errors import UserError
from hv_jax.pipeline import image_to_3d, stages

PHOTO = P.ROOT / 'hv_jax' / 'assets' / 'demo' / 'bell_photo.jpg'
GSO_MESH = P.ROOT / 'tests' / 'fixtures' / 'gso' / 'cream' / 'model.obj'     # a real GT mesh


# the test's shortening of configs/image_to_3d_demo.py, as flags (the kill -9 test's subprocess) and as settings
SHORT = {'sample.model': str(small_model.PATH), 'sample.sample_steps': 2, 'sample.progress': False,
         'neus.train.total_steps': 12, 'neus.train.decay_interval': 12, 'neus.save_every': 4,
         'neus.mesh_resolution': 64, 'neus.progress': False, 'texture_size': 128, 'preview_frames': 4}


def _config(out, **kw) -> image_to_3d.ImageTo3DSettings:
  """configs/image_to_3d_demo.py shortened for a test (SHORT): the behaviour tests' model (tests/small_model.py),
  2 DDIM steps, 12 NeuS steps, a 64^3 mesh, a small texture."""
  c = cli.load_config(P.ROOT / 'configs' / 'image_to_3d_demo.py')
  for key, value in SHORT.items():
    node = c
    *path, leaf = key.split('.')
    for name in path:
      node = node[name]
    node[leaf] = value
  c = settings.from_dict(image_to_3d.ImageTo3DSettings, c.to_dict())
  return dataclasses.replace(c, output_dir=str(out), **kw)


def _files(d):
  d = pathlib.Path(d)
  return {str(p.relative_to(d)): digest.file_sha256(p) for p in sorted(d.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
  """One run from the JPEG with elevation 'auto' and tolerance 0: the estimate always starts a second round."""
  out = tmp_path_factory.mktemp('i23d') / 'out'
  s = _config(out, elevation_tolerance=0.0)
  return s, image_to_3d.run(s)['bell_photo'], out / 'bell_photo'


def test_every_stage_writes_its_outputs(demo):
  s, report, folder = demo
  for name in ('input_rgba.png', 'elevation.json', 'mesh.glb', 'mesh.obj', 'turntable.gif', 'preview.png', 'report.json'):
    assert (folder / name).is_file(), name
  cut = np.asarray(Image.open(folder / 'input_rgba.png'))
  assert cut.shape == (256, 256, 4) and report['prepare']['matting'] == 'plain'
  ys, xs = np.nonzero(cut[..., 3] > 127)
  # framed to crop_size: the bbox of the soft matte (alpha > 0) is crop_size; its half-alpha outline is a little less
  assert 0 <= s.crop_size - (max(ys.max() - ys.min(), xs.max() - xs.min()) + 1) <= 8
  el = report['elevation']
  assert el['mode'] == 'auto' and el['prior_deg'] == 30.0 and -10 <= el['estimate_deg'] <= 40
  assert len(report['rounds']) == (1 if el['estimate_deg'] == 30.0 else 2)
  assert el['used_deg'] == report['rounds'][-1]['elevation_deg']
  for r in report['rounds']:
    assert len(r['scores']) == 2 and r['chosen'] in (0, 1) and r['chosen_by'] == 'score'
    assert r['chosen'] == int(np.argmax([sc['total'] for sc in r['scores']]))
    strip = np.asarray(Image.open(folder / r['folder'] / 'views.png'))
    assert strip.shape == (256, 4096, 3)
  assert report['weights'].startswith('random')
  assert set(report['seconds']) >= {'prepare', 'elevation', 'export', 'total'}
  on_disk = json.loads((folder / 'report.json').read_text())
  assert on_disk['rounds'] == json.loads(json.dumps(report['rounds']))


def test_the_asset_opens_in_trimesh_with_its_texture(demo):
  import trimesh
  _, _, folder = demo
  scene = trimesh.load(folder / 'mesh.glb')
  geoms = list(scene.geometry.values()) if hasattr(scene, 'geometry') else [scene]
  assert len(geoms) == 1 and len(geoms[0].faces) > 0
  assert isinstance(geoms[0].visual, trimesh.visual.texture.TextureVisuals)
  assert geoms[0].visual.material.baseColorTexture is not None
  obj = trimesh.load(folder / 'mesh.obj', force='mesh')
  assert len(obj.faces) == len(geoms[0].faces)
  gif = Image.open(folder / 'turntable.gif')
  assert gif.n_frames == 4


def test_a_rerun_redoes_nothing_and_a_changed_setting_redoes_only_its_stage(demo, tmp_path):
  s, _, folder = demo
  before = _files(folder)
  report = image_to_3d.run(s)['bell_photo']
  assert _files(folder) == {**before, 'report.json': digest.file_sha256(folder / 'report.json')}
  assert report['outputs'] and report['rounds'] == json.loads(json.dumps(image_to_3d.run(s)['bell_photo']['rounds']))
  records = {p.stem: json.loads(p.read_text()) for p in (folder / stages.STAGES).glob('*.json')}
  # texture_size changes the export only: its record is replaced, the others are kept as they were
  image_to_3d.run(dataclasses.replace(s, texture_size=64))
  after = {p.stem: json.loads(p.read_text()) for p in (folder / stages.STAGES).glob('*.json')}
  assert {k for k in after if after[k] != records[k]} == {'export'}
  assert after['export']['identity']['texture_size'] == 64


def test_a_killed_stage_leaves_no_record_and_runs_again(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    (tmp_path / 'a.txt').write_text('x')
    if len(calls) == 1:
      raise KeyboardInterrupt       # killed after writing its output, before its record
    return {'n': len(calls)}

  with pytest.raises(KeyboardInterrupt):
    stages.cached(tmp_path, 's', {'k': 1}, ['a.txt'], compute)
  assert not (tmp_path / stages.STAGES / 's.json').exists()
  assert stages.cached(tmp_path, 's', {'k': 1}, ['a.txt'], compute) == {'n': 2, 'seconds': pytest.approx(0, abs=5),
                                                                       'skipped': False}
  assert stages.cached(tmp_path, 's', {'k': 1}, ['a.txt'], compute)['skipped']
  (tmp_path / 'a.txt').write_text('edited')                       # an output changed by hand: redone
  assert not stages.cached(tmp_path, 's', {'k': 1}, ['a.txt'], compute)['skipped']
  assert not stages.cached(tmp_path, 's', {'k': 2}, ['a.txt'], compute)['skipped']     # other settings: redone


@pytest.mark.parametrize('change,message', [
    ({'input': ''}, 'no input'),
    ({'elevation': 'high'}, "--config.elevation='high'"),
    ({'elevation': '75'}, 'elevation'),
    ({'select': 5}, '--config.select=5'),
    ({'crop_size': 0}, '--config.crop_size=0'),
    # a GT mesh is checked before sampling: NeuS's input (a round's views.png) names no object
    ({'neus.gt_mesh': str(GSO_MESH)}, '--config.neus.gt_mesh needs --config.neus.gt_name=OBJECT'),
    ({'neus.gt_mesh': str(GSO_MESH), 'neus.gt_name': 'zzz'}, "neus.gt_name: unknown object 'zzz'"),
    ({'neus.gt_mesh': '/nonexistent/mesh.obj', 'neus.gt_name': 'cream'}, 'neus.gt_mesh /nonexistent/mesh.obj: no such'),
    ({'neus.gt_rotation': 3.0}, '--config.neus.gt_rotation is the GT mesh rotation: it needs --config.neus.gt_mesh'),
    # the blocks' own checks name the flag as this command takes it
    ({'neus.mesh_resolution': 1}, '^--config.neus.mesh_resolution=1: must be >= 2'),
    ({'sample.s1': float('nan')}, '^--config.sample.s1=nan: must be a finite number'),
    # a rembg model file that the chosen method would never use is refused, not ignored
    ({'neus.matting_model': 'u2net.onnx'}, '^--config.neus.matting_model=u2net.onnx is never used with '
                                           '--config.neus.matting=white: set --config.neus.matting=rembg'),
    ({'matting': 'plain', 'matting_model': 'u2net.onnx'}, '^--config.matting_model=u2net.onnx is never used with '
                                                          '--config.matting=plain'),
])
def test_bad_settings_are_one_line(tmp_path, change, message):
  s = _config(tmp_path / 'out', input=str(PHOTO))
  block = lambda b: {k.split('.', 1)[1]: v for k, v in change.items() if k.startswith(b + '.')}
  top = {k: v for k, v in change.items() if '.' not in k}
  s = dataclasses.replace(s, neus=dataclasses.replace(s.neus, **block('neus')),
                          sample=dataclasses.replace(s.sample, **block('sample')), **top)
  with pytest.raises(UserError, match=message.replace('(', r'\(')):
    image_to_3d.run(s)
  assert not (tmp_path / 'out').exists()


def test_fields_the_pipeline_sets_are_refused_in_the_blocks(tmp_path):
  s = _config(tmp_path / 'out')
  bad = dataclasses.replace(s, sample=dataclasses.replace(s.sample, elevation=10.0))
  with pytest.raises(UserError, match=r'--config.sample.elevation is set by the pipeline: use --config.elevation'):
    image_to_3d.run(bad)


def test_bad_inputs_from_the_command_line_are_one_line_and_write_nothing(tmp_path):
  fake = tmp_path / 'fake.png'
  fake.write_text('not an image')
  env = dict(os.environ, PYTHONPATH=str(P.ROOT))
  cases = [([f'--config.input={fake}'], 'fake.png'),
           ([f'--config.input={tmp_path / "missing.jpg"}'], 'not found'),
           ([f'--config.input={PHOTO}', '--config.checkpoint=/nonexistent/ckpt'], '/nonexistent/ckpt')]
  for extra, message in cases:
    out = tmp_path / 'out'
    r = subprocess.run([sys.executable, '-m', 'hv_jax.image_to_3d', f'--config={P.ROOT}/configs/image_to_3d_demo.py',
                        f'--config.output_dir={out}', *extra], capture_output=True, text=True, env=env, cwd=P.ROOT,
                       timeout=600)
    assert r.returncode != 0, r.stdout
    err = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(err) == 1 and err[0].startswith('error:') and message in err[0], r.stderr[-2000:]
    assert 'Traceback' not in r.stderr
    partial = [p for p in out.rglob('*') if p.is_file()] if out.exists() else []
    assert not any(p.suffix in ('.glb', '.ply') for p in partial), partial


def test_kill_9_during_neus_then_rerun_finishes_with_the_uninterrupted_result(demo, tmp_path):
  """A run killed while NeuS trains resumes there: the round's mesh is the one an uninterrupted run made.
  The run starts from a copy of the demo's first round without its NeuS folder, so the prepare, sample and
  select stages are skipped from their records (the sampler from its manifest) and the kill lands in NeuS."""
  import shutil
  import signal
  import time
  _, _, folder = demo
  out = tmp_path / 'out'
  done = out / 'bell_photo'
  shutil.copytree(folder, done, ignore=shutil.ignore_patterns('neus'))
  for other in (done / 'rounds').iterdir():
    if other.name != 'e+30.0':
      shutil.rmtree(other)
  for name in ('mesh.glb', 'mesh.obj', 'report.json', 'elevation.json', 'stages/export.json', 'stages/elevation.json'):
    (done / name).unlink(missing_ok=True)
  assert sorted(p.name for p in (done / 'rounds').iterdir()) == ['e+30.0']
  args = [sys.executable, '-m', 'hv_jax.image_to_3d', f'--config={P.ROOT}/configs/image_to_3d_demo.py',
          f'--config.output_dir={out}', '--config.elevation=30', *[f'--config.{k}={v}' for k, v in SHORT.items()]]
  env = dict(os.environ, PYTHONPATH=str(P.ROOT))
  ckpt = done / 'rounds' / 'e+30.0' / 'neus' / 'checkpoints'
  p = subprocess.Popen(args, cwd=P.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  t0 = time.time()
  while not (ckpt.is_dir() and any(c.name.isdigit() for c in ckpt.iterdir())):
    assert p.poll() is None, p.communicate()[1].decode()[-2000:]
    assert time.time() - t0 < 900
    time.sleep(0.1)
  os.kill(p.pid, signal.SIGKILL)
  p.wait()
  assert not (done / 'mesh.glb').exists() and not (done / 'rounds' / 'e+30.0' / 'neus' / 'mesh.ply').exists()
  r = subprocess.run(args, cwd=P.ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'redoing' not in r.stdout, r.stdout           # prepare and select were kept, not redone
  assert (done / 'mesh.glb').is_file() and (done / 'report.json').is_file()
  ref = folder / 'rounds' / 'e+30.0'
  for rel in ('views.png', 'neus/mesh.ply'):
    assert digest.file_sha256(done / 'rounds' / 'e+30.0' / rel) == digest.file_sha256(ref / rel), rel


def test_an_unwritable_output_folder_is_one_line(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')                 # a folder below a file cannot be made (root can write anywhere else)
  with pytest.raises(UserError, match='not writable'):
    image_to_3d.run(_config(blocker / 'out', input=str(PHOTO)))
  assert blocker.read_text() == 'x'
