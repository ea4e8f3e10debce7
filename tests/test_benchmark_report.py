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
