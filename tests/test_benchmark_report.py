"""benchmarks/evaluate.py's table: sittings, first objects apart, totals, outliers and the noise-monotonicity line."""
from __future__ import annotations

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).parent.parent


def _bench():
  spec = importlib.util.spec_from_file_location('bench_evaluate', ROOT / 'benchmarks' / 'evaluate.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _record(name, seconds, first, psnr=(30., 28., 26.), e_flow=(.1, .2, .3)):
  return {'object': name, 'seconds': seconds, 'cpu_seconds': {m: 1.5 * s for m, s in seconds.items()},
          'seconds_include_compilation': first,
          'per_instance': {'psnr': list(psnr), 'ssim': [.9, .8, .7], 'lpips': [.1, .2, .3], 'e_flow': list(e_flow)}}


def test_report_table(tmp_path, capsys):
  objects = tmp_path / 'out' / 'objects'
  objects.mkdir(parents=True)
  (tmp_path / 'inputs.json').write_text(json.dumps({'gt': '/x', 'objects': 5, 'instances': 3}))
  (tmp_path / 'sittings.json').write_text(json.dumps(
      [{'started': '2026-01-01 00:00:00', 'objects_done_before': 0, 'matmul_gflops': 100.0}]))
  records = [_record('a', {'lpips': 12., 'e_flow': 20.}, True),
             _record('b', {'lpips': 10., 'e_flow': 20.}, False),
             _record('c', {'lpips': 10., 'e_flow': 22.}, False, psnr=(30., 31., 26.)),
             _record('d', {'lpips': 30., 'e_flow': 40.}, False, e_flow=(.1, .1, .3))]
  for r in records:
    (objects / f'{r["object"]}.json').write_text(json.dumps(r))
  _bench().print_table(str(tmp_path))
  out = capsys.readouterr().out
  assert '4 of 5 objects x 3 instances done' in out
  assert 'in-run float32 matmul 100.0 GFLOP/s' in out
  assert '| lpips | 12.00 | 16.67 | 10.00 | 1.50 | 62.0 |' in out
  assert '| all | 32.00 | 44.00 | 32.00 | | 164.0 |' in out
  assert 'objects over 1.25x the median total (the CPU was likely shared): d' in out
  assert 'strictly with the noise in 2 of 4 objects; not in c:psnr, d:e_flow' in out


def _gso_records():
  spec = importlib.util.spec_from_file_location('bench_gso_records', ROOT / 'benchmarks' / 'gso_records.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_gso_records_add_only_what_was_made_from_the_reconstruction(tmp_path, monkeypatch):
  """benchmarks/gso_records.py add: a record from one reconstruction's metrics, elevation estimates and texture row;
  estimates or a row of another mesh, or not naming theirs, or another mask source is one line, nothing added."""
  import hashlib
  import pytest
  g = _gso_records()
  monkeypatch.setattr(g, 'RECORDS', str(tmp_path / 'records.json'))
  recon, elev, tex = tmp_path / 'recon', tmp_path / 'elev', tmp_path / 'tex'
  for d in (recon / 'cream', elev, tex):
    d.mkdir(parents=True)
  sha = {}
  for name in g.MESHES:
    (recon / 'cream' / name).write_bytes(name.encode())
    sha[name] = hashlib.sha256(name.encode()).hexdigest()
  metrics = {'mask_source': 'plain', 'steps': 800, 'geometry': {'chamfer': 0.01, 'iou': 0.9},
             'geometry_nofloor': {'chamfer': 0.02, 'iou': 0.8}, 'seconds': {'total': 60.0}}
  (recon / 'cream' / 'metrics.json').write_text(json.dumps(metrics))

  def write(elev_sha=sha, tex_sha=sha['mesh.ply']):
    recs = [{'object': 'cream', 'kind': 'gt', 'true_deg': 5.0, 'error_deg': 0.1, 'seconds': 1.0}] + [
        {'object': 'cream', 'kind': f'recon:{n}', 'true_deg': 5.0, 'error_deg': 1.5, 'seconds': 1.0,
         'mesh_sha256': elev_sha[n] if elev_sha else None} for n in g.MESHES]
    (elev / 'recon_cream.json').write_text(json.dumps({'elevations': [5.0], 'records': recs}))
    (tex / 'cream.md').write_text('| cream | 10 | 10 | 20.00 | 21.00 | +1.00 | 1.0 (0.5 / 0.5) | 90% |\n\n' +
                                  (f'mesh.ply sha256: cream {tex_sha}\n' if tex_sha else ''))

  def add():
    g.main(['add', f'--recon={recon}', f'--elevation={elev}', f'--texture={tex}', 'cream'])

  for case, needle in [(dict(tex_sha=None), 'cream.md: its row of cream does not name its mesh'),
                       (dict(tex_sha='0' * 64), 'cream.md: its row of cream was made from another mesh than'),
                       (dict(elev_sha=None), 'its row of estimates for cream/mesh.ply does not name its mesh'),
                       (dict(elev_sha={**sha, 'mesh_nofloor.ply': '1' * 64}),
                        'its row of estimates for cream/mesh_nofloor.ply was made from another mesh than')]:
    write(**case)
    with pytest.raises(SystemExit, match=needle):
      add()
    assert not (tmp_path / 'records.json').exists(), case
  write()
  (recon / 'cream' / 'metrics.json').write_text(json.dumps({**metrics, 'mask_source': 'alpha'}))
  with pytest.raises(SystemExit, match="masks 'alpha' at 800 steps, not 'plain' at 800: nothing added"):
    add()
  (recon / 'cream' / 'metrics.json').write_text(json.dumps(metrics))
  add()
  rec = json.loads((tmp_path / 'records.json').read_text())['cream']
  assert (rec['chamfer'], rec['iou'], rec['minutes']) == (0.01, 0.9, 1.0)
  assert rec['elevation'] == {n: {'5.0': [1.5, 1.0]} for n in g.MESHES}
  assert rec['texture_row'].startswith('| cream | 10 |')
