"""`python -m hv_jax.evaluate`: statistics as the original scripts, outputs, resume, and bad input."""
from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from hv_jax import evaluate
from hv_jax.metrics import stats

CREAM = pathlib.Path(__file__).parent / 'fixtures' / 'gso' / 'cream'


def test_per_object_statistics():
  s = stats.per_object([20., 22., 21.], 'psnr')
  assert s == {'best': 22., 'mean': 21., 'var': pytest.approx(2 / 3)}
  assert stats.per_object([0.2, 0.1], 'lpips')['best'] == 0.1
  assert stats.per_object([0.02, 0.01], 'chamfer')['best'] == 0.01
  assert stats.per_object([float('inf')] * 2, 'psnr') == {'best': float('inf'), 'mean': float('inf'), 'var': 0.}
  summary = stats.summarize({'a': {'psnr': np.array([20., 22.])}, 'b': {'psnr': np.array([10., 12.])}})
  assert summary['psnr'] == {'best': 17., 'mean': 16., 'var': 1., 'objects': 2}


def test_eval_nvs_running_means():
  """eval_nvs.py never clears its lists: the value logged for instance k averages instances 0..k."""
  per_view = np.array([[1.] * 16, [3.] * 16, [8.] * 16])
  np.testing.assert_allclose(stats.nvs_script_rows(per_view), [1., 2., 4.])


def _gt(tmp_path, names=('cream',)):
  """Copies of the real cream views with a binary alpha, so that a uint8 strip can hold the exact composite."""
  gt = tmp_path / 'gt'
  for n in names:
    (gt / n).mkdir(parents=True)
    for k in range(16):
      rgba = np.asarray(Image.open(CREAM / f'{k:03}.png').convert('RGBA')).copy()
      rgba[..., 3] = np.where(rgba[..., 3] >= 128, 255, 0)
      Image.fromarray(rgba).save(gt / n / f'{k:03}.png')
  return gt


def _composite(rgba):
  x = rgba.astype(np.float32) / 255.
  return np.round((x[..., :3] * x[..., 3:] + 1 - x[..., 3:]) * 255).astype(np.uint8)


def _write_preds(pred, gt_obj, noises, seed=0):
  rng = np.random.default_rng(seed)
  views = np.stack([_composite(np.asarray(Image.open(gt_obj / f'{k:03}.png').convert('RGBA'))) for k in range(16)])
  pred.mkdir(parents=True, exist_ok=True)
  for k, sigma in enumerate(noises):
    v = np.clip(views.astype(np.float32) + rng.normal(0, sigma, views.shape), 0, 255).astype(np.uint8)
    Image.fromarray(np.concatenate(list(v), 1)).save(pred / f'{k}.png')


def test_cli_outputs_and_resume(tmp_path, capsys):
  gt = _gt(tmp_path, ('cream', 'soap'))
  _write_preds(tmp_path / 'pred' / 'cream', gt / 'cream', [0., 4., 16.])
  _write_preds(tmp_path / 'pred' / 'soap', gt / 'soap', [0., 4., 16.])
  out = tmp_path / 'out'
  argv = [f'--config.pred={tmp_path / "pred"}', f'--config.gt={gt}', f'--config.out={out}', '--config.progress=False']
  assert evaluate.main(argv) == 0
  rec = evaluate.load_record(out / 'objects' / 'cream.json')     # PSNR inf is stored as the string 'inf'
  psnr, ssim = rec['per_instance']['psnr'], rec['per_instance']['ssim']
  assert psnr[0] == float('inf') and abs(ssim[0] - 1) < 1e-6          # GT against itself
  assert psnr[1] > psnr[2] and ssim[0] > ssim[1] > ssim[2]          # more noise, worse
  assert set(rec['unavailable']) == {'cd_score', 'lpips', 'e_flow', 'geometry'}
  assert 'set --config.raft' in rec['unavailable']['e_flow']
  # the first object of a process pays compilation: its seconds say so (benchmarks/evaluate.py reports it apart)
  assert rec['seconds_include_compilation'] is True
  assert json.load(open(out / 'objects' / 'soap.json'))['seconds_include_compilation'] is False
  assert set(rec['cpu_seconds']) == set(rec['seconds']) == {'psnr_ssim'}
  table = (out / 'table.md').read_text()
  assert '| PSNR ↑ | 2 | ∞ |' in table and 'e_flow: unavailable' in table
  assert (out / 'results.csv').read_text().splitlines()[0] == 'object,instance,psnr,ssim'
  assert (out / 'figure.png').stat().st_size > 1000
  mtime = os.stat(out / 'objects' / 'cream.json').st_mtime_ns
  assert evaluate.main(argv) == 0                                    # resumes: nothing recomputed
  assert os.stat(out / 'objects' / 'cream.json').st_mtime_ns == mtime


def _error(argv, capsys):
  assert evaluate.main(argv + ['--config.progress=False']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ')
  return err[0]


def test_bad_inputs(tmp_path, capsys):
  gt = _gt(tmp_path, ('cream', 'soap'))
  pred = tmp_path / 'pred'
  base = [f'--config.gt={gt}', f'--config.out={tmp_path / "out"}']
  _write_preds(pred / 'cream', gt / 'cream', [0., 1.])
  _write_preds(pred / 'soap', gt / 'soap', [0.])
  assert 'different instance counts' in _error([f'--config.pred={pred}'] + base, capsys)
  assert _error([f'--config.pred={pred}', '--config.matting=x'] + base, capsys).startswith(
      "error: --config.matting='x': unknown matting method 'x'")
  assert 'expected 2 strips' in _error([f'--config.pred={pred}', '--config.num_samples=2'] + base, capsys)
  Image.fromarray(np.zeros((256, 2048, 3), np.uint8)).save(pred / 'soap' / '0.png')
  assert 'expected 4096x256' in _error([f'--config.pred={pred}', '--config.objects=soap'] + base, capsys)
  os.remove(gt / 'cream' / '007.png')
  assert '007.png' in _error([f'--config.pred={pred}', '--config.objects=cream'] + base, capsys)
  assert 'no GT folder' in _error([f'--config.pred={pred}', '--config.objects=teapot'] + base, capsys)
  os.remove(pred / 'cream' / '0.png')
  assert 'without gaps' in _error([f'--config.pred={pred}', '--config.objects=cream'] + base, capsys)
  assert not (tmp_path / 'out').exists()                            # nothing was written: no folder either


def test_every_metric_wired(tmp_path):
  """All learned metrics through evaluate_object on small real views (random LPIPS/RAFT weights, the tiny
  recorded CLIP): GT against itself gives PSNR inf, SSIM 1, LPIPS 0 and E_flow 0; noise makes them worse
  (monotonic growth with strength: tests/test_image_metrics.py)."""
  from convert import clip as convert_clip
  from tests import parity as P
  gt = tmp_path / 'gt' / 'cream'
  gt.mkdir(parents=True)
  for k in range(16):
    rgba = Image.open(CREAM / f'{k:03}.png').convert('RGBA').resize((64, 64), Image.BILINEAR)
    rgba = np.asarray(rgba).copy()
    rgba[..., 3] = np.where(rgba[..., 3] >= 128, 255, 0)
    Image.fromarray(rgba).save(gt / f'{k:03}.png')
  _write_preds(tmp_path / 'pred' / 'cream', gt, [0., 24.])
  args = evaluate.EvaluateSettings(gt=str(tmp_path / 'gt'), pred=str(tmp_path / 'pred'), random_weights=True)
  params, config, _ = convert_clip.load(str(P.PARITY_DIR / 'cd_clip_tiny'))
  ids = P.fixtures()['cd_text_ids']
  backends = {'cd_score': evaluate.cd_backend(params, config, lambda prompt: ids),
              'lpips': evaluate.lpips_backend(args), 'e_flow': evaluate.raft_backend(args)}
  rec = evaluate.evaluate_object('cream', args, backends)
  m = rec['per_instance']
  assert m['psnr'][0] == float('inf') and abs(m['ssim'][0] - 1) < 1e-5   # variances clamped at 0: ~3e-6 off
  assert abs(m['lpips'][0]) < 1e-6 and m['e_flow'][0] == 0.
  for name in ('psnr', 'ssim'):
    assert m[name][0] > m[name][1], name
  for name in ('lpips', 'e_flow'):
    assert m[name][0] < m[name][1], name
  assert m['cd_D'][0] > 0 and len(m['cd_S_var']) == 2
  assert set(rec['unavailable']) == {'geometry'} and len(rec['per_view']['lpips'][0]) == 16


def test_meshes_give_chamfer_and_iou(tmp_path):
  """--meshes: <object>-<k>-neus/mesh.ply as the original names them; the normalised GT mesh against the GT
  scores Chamfer ~0 and IoU ~1, and an object without a mesh is reported as unavailable."""
  from hv_jax.metrics import geometry
  from hv_jax.neus.mesh import write_ply
  gt = _gt(tmp_path)
  shutil.copy(CREAM / 'model.obj', gt / 'cream' / 'model.obj')
  _write_preds(tmp_path / 'pred' / 'cream', gt / 'cream', [0.])
  m = geometry.load_mesh(CREAM / 'model.obj')
  write_ply(tmp_path / 'meshes' / 'cream-0-neus' / 'mesh.ply', geometry.normalize_gt(m.vertices, 0.), m.faces)
  out = tmp_path / 'out'
  assert evaluate.main([f'--config.pred={tmp_path / "pred"}', f'--config.gt={gt}', f'--config.out={out}',
                        '--config.progress=False', f'--config.meshes={tmp_path / "meshes"}']) == 0
  rec = json.load(open(out / 'objects' / 'cream.json'))
  assert rec['per_instance']['chamfer'][0] < 1e-3 and rec['per_instance']['iou'][0] > 0.99
  assert 'Chamfer ↓' in (out / 'table.md').read_text()
  os.remove(tmp_path / 'meshes' / 'cream-0-neus' / 'mesh.ply')
  assert evaluate.main([f'--config.pred={tmp_path / "pred"}', f'--config.gt={gt}', f'--config.out={out}',
                        '--config.progress=False', f'--config.meshes={tmp_path / "meshes"}',
                        '--config.overwrite=True']) == 0
  assert 'mesh of instance 0' in json.load(open(out / 'objects' / 'cream.json'))['unavailable']['geometry']


# ----------------------------------------------------------------------------- reuse keyed on the inputs

def _small_gt(tmp_path, names=('cream',), size=32):
  """size x size copies of the cream views (binary alpha): fast runs of the CLI."""
  gt = tmp_path / 'gt'
  for n in names:
    (gt / n).mkdir(parents=True)
    for k in range(16):
      rgba = np.asarray(Image.open(CREAM / f'{k:03}.png').convert('RGBA').resize((size, size), Image.BILINEAR)).copy()
      rgba[..., 3] = np.where(rgba[..., 3] >= 128, 255, 0)
      Image.fromarray(rgba).save(gt / n / f'{k:03}.png')
  return gt


def _strict_json(path):
  """json.load that refuses NaN / Infinity (not JSON)."""
  def refuse(c):
    raise ValueError(f'{path}: non-JSON constant {c}')
  return json.loads(pathlib.Path(path).read_text(), parse_constant=refuse)


def _run(argv, capsys):
  code = evaluate.main(argv + ['--config.progress=False'])
  return code, [l for l in capsys.readouterr().err.splitlines() if l.startswith(('evaluate: ', 'error: '))]


def test_same_inputs_are_reused_and_logged(tmp_path, capsys):
  gt = _small_gt(tmp_path, ('cream', 'soap'))
  for n in ('cream', 'soap'):
    _write_preds(tmp_path / 'pred' / n, gt / n, [0., 8.])
  out = tmp_path / 'out'
  argv = [f'--config.pred={tmp_path / "pred"}', f'--config.gt={gt}', f'--config.out={out}']
  assert _run(argv, capsys) == (0, [])
  rec = _strict_json(out / 'objects' / 'cream.json')            # valid JSON: inf is the string 'inf'
  assert rec['per_instance']['psnr'][0] == 'inf' and rec['per_view']['psnr'][0][0] == 'inf'
  assert set(rec['inputs']) == {'pred:cream/0.png', 'pred:cream/1.png'} | {f'gt:cream/{k:03}.png' for k in range(16)}
  assert rec['settings']['ssim_border'] == 'crop' and rec['settings']['metrics']['lpips'] == {'available': False}
  assert _strict_json(out / 'summary.json')['summary']['psnr']['best'] == 'inf'
  assert evaluate.load_record(out / 'objects' / 'cream.json')['per_instance']['psnr'][0] == float('inf')
  assert (out / 'results.csv').read_text().splitlines()[1].startswith('cream,0,inf,')
  before = {p.name: p.stat().st_mtime_ns for p in (out / 'objects').iterdir()}
  code, log = _run(argv, capsys)
  assert code == 0 and log == ['evaluate: reused 2 of 2 stored objects (same strips, GT files and settings): cream, soap']
  assert {p.name: p.stat().st_mtime_ns for p in (out / 'objects').iterdir()} == before
  assert '| PSNR ↑ | 2 | ∞ |' in (out / 'table.md').read_text()


def test_changed_strips_gt_or_settings_are_recomputed_and_logged(tmp_path, capsys):
  gt = _small_gt(tmp_path, ('cream', 'soap'))
  for n in ('cream', 'soap'):
    _write_preds(tmp_path / 'pred' / n, gt / n, [0., 8.])
  out = tmp_path / 'out'
  argv = [f'--config.pred={tmp_path / "pred"}', f'--config.gt={gt}', f'--config.out={out}']
  assert _run(argv, capsys)[0] == 0
  old = evaluate.load_record(out / 'objects' / 'cream.json')['per_instance']['psnr']
  _write_preds(tmp_path / 'pred' / 'cream', gt / 'cream', [0., 30.], seed=1)        # strips replaced
  code, log = _run(argv, capsys)
  assert code == 0 and log == [
      'evaluate: reused 1 of 2 stored objects (same strips, GT files and settings): soap',
      'evaluate: recomputing cream: strips changed since the stored result (cream/1.png)']
  new = evaluate.load_record(out / 'objects' / 'cream.json')['per_instance']['psnr']
  assert new[0] == old[0] == float('inf') and new[1] < old[1]       # the new, noisier strip was evaluated
  Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(gt / 'soap' / '003.png')
  code, log = _run(argv, capsys)
  assert code == 0 and log[1] == 'evaluate: recomputing soap: GT files changed since the stored result (soap/003.png)'
  code, log = _run(argv + ['--config.ssim_border=full'], capsys)
  assert code == 0 and log == [f'evaluate: recomputing {n}: settings changed since the stored result (ssim_border)'
                               for n in ('cream', 'soap')]
  rec = json.loads((out / 'objects' / 'soap.json').read_text())
  del rec['inputs']                                                 # a record of an older version
  (out / 'objects' / 'soap.json').write_text(json.dumps(rec))
  code, log = _run(argv + ['--config.ssim_border=full'], capsys)
  assert code == 0 and log[1] == ('evaluate: recomputing soap: the stored result has no input hashes '
                                  '(made by an older version)')
  assert 'inputs' in json.loads((out / 'objects' / 'soap.json').read_text())


def test_failure_before_the_first_result_leaves_no_out_folder(tmp_path, capsys):
  gt = _small_gt(tmp_path)
  pred = tmp_path / 'pred'
  _write_preds(pred / 'cream', gt / 'cream', [0.])
  Image.fromarray(np.zeros((32, 256, 3), np.uint8)).save(pred / 'cream' / '0.png')     # wrong strip size
  out = tmp_path / 'new' / 'out'
  code, log = _run([f'--config.pred={pred}', f'--config.gt={gt}', f'--config.out={out}'], capsys)
  assert code == 2 and len(log) == 1 and 'expected 512x32' in log[0], log
  assert not (tmp_path / 'new').exists()
  (tmp_path / 'file').write_text('x')
  code, log = _run([f'--config.pred={pred}', f'--config.gt={gt}', f'--config.out={tmp_path / "file" / "out"}'],
                   capsys)
  assert code == 2 and log == [f"error: cannot write to --config.out={tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is "
                               'not a folder']


def test_meshes_of_an_unknown_object_name_are_refused(tmp_path, capsys):
  """--meshes: the GT rotation comes from the object name; 'Cream' is not a GSO-eval object (a silent 0 would
  be the original's behaviour) -> one line with the known spelling, nothing written; --gt_rotation names it."""
  from hv_jax.metrics import geometry
  from hv_jax.neus.mesh import write_ply
  gt = _small_gt(tmp_path, ('Cream',))
  shutil.copy(CREAM / 'model.obj', gt / 'Cream' / 'model.obj')
  _write_preds(tmp_path / 'pred' / 'Cream', gt / 'Cream', [0.])
  m = geometry.load_mesh(CREAM / 'model.obj')
  write_ply(tmp_path / 'meshes' / 'Cream-0-neus' / 'mesh.ply', geometry.normalize_gt(m.vertices, 0.), m.faces)
  out = tmp_path / 'out'
  argv = [f'--config.pred={tmp_path / "pred"}', f'--config.gt={gt}', f'--config.out={out}',
          f'--config.meshes={tmp_path / "meshes"}']
  code, log = _run(argv, capsys)
  assert code == 2 and log == ["error: --config.meshes: unknown object 'Cream': did you mean 'cream'? set "
                               '--config.gt_rotation=Cream=0 if its GT mesh needs no rotation'], log
  assert not out.exists()
  code, log = _run(argv + ['--config.gt_rotation=Cream=nan'], capsys)
  assert code == 2 and len(log) == 1 and 'finite number' in log[0] and not out.exists()
  code, log = _run(argv + ['--config.gt_rotation=Cream=0'], capsys)
  assert code == 0, log
  rec = evaluate.load_record(out / 'objects' / 'Cream.json')
  assert rec['per_instance']['chamfer'][0] < 1e-3 and rec['settings']['gt_rotation_deg'] == 0.0
  code, log = _run(argv + ['--config.gt_rotation=Cream=90'], capsys)     # another rotation: not the stored result
  assert code == 0 and log == ['evaluate: recomputing Cream: settings changed since the stored result '
                               '(gt_rotation_deg)']
  assert evaluate.load_record(out / 'objects' / 'Cream.json')['per_instance']['chamfer'][0] > 1e-3


def test_weight_files_are_part_of_the_settings(tmp_path):
  """A learned metric's numbers depend on its weights: the settings key holds each weight file's sha256 (a
  replaced file is not the stored result's; a moved one is), and only 'random' with random_weights."""
  import dataclasses
  weights = tmp_path / 'raft-things.pth'
  weights.write_bytes(b'x' * 10)
  args = evaluate.EvaluateSettings(raft=str(weights))
  b = {'e_flow': evaluate.Backend(fn=lambda *a: {}), 'lpips': evaluate.Backend(reason='no weights')}
  first = evaluate.run_settings(args, b)
  assert first['metrics']['lpips'] == {'available': False}
  assert first['metrics']['e_flow']['weights']['raft'] == 'sha256:' + evaluate.digest.file_sha256(weights)
  assert evaluate.run_settings(args, b) == first
  moved = tmp_path / 'moved.pth'
  weights.rename(moved)
  args = dataclasses.replace(args, raft=str(moved))
  assert evaluate.run_settings(args, b) == first
  moved.write_bytes(b'y' * 10)
  assert evaluate.stale_reason({'instances': 1, 'inputs': {}, 'settings': first}, 1, {},
                               evaluate.run_settings(args, b)) == \
      'settings changed since the stored result (e_flow weights)'
  args = dataclasses.replace(args, random_weights=True)
  assert evaluate.run_settings(args, b)['metrics']['e_flow'] == {'available': True, 'weights': 'random'}


def test_gt_views_without_alpha_are_matted_and_named_in_the_settings(tmp_path):
  """RGB GT views (no alpha) get the plain matte as their alpha; RGBA GT keeps its own and the settings keys of
  before (no `gt_masks`)."""
  gt = _gt(tmp_path)
  rgb_dir = tmp_path / 'rgb' / 'cream'
  rgb_dir.mkdir(parents=True)
  for k in range(16):
    Image.fromarray(_composite(np.asarray(Image.open(gt / 'cream' / f'{k:03}.png')))).save(rgb_dir / f'{k:03}.png')
  own = evaluate.gt_views(str(gt / 'cream'))
  matted = evaluate.gt_views(str(rgb_dir))
  assert matted.shape == own.shape
  for k in (0, 5, 11):
    a, b = matted[k, ..., 3] > 127, own[k, ..., 3] > 127
    assert (a & b).sum() / (a | b).sum() > 0.93, k
  s = evaluate.EvaluateSettings(pred=str(tmp_path), gt=str(tmp_path / 'rgb'), out=str(tmp_path / 'out'))
  assert evaluate._object_settings('cream', s, {})['gt_masks'] == {'method': 'plain'}
  s = evaluate.EvaluateSettings(pred=str(tmp_path), gt=str(gt), out=str(tmp_path / 'out'))
  assert 'gt_masks' not in evaluate._object_settings('cream', s, {})
