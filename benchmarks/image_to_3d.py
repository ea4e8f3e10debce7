"""Per-stage seconds and peak memory of `python -m hv_jax.image_to_3d`, against an in-run float32 matmul.

Each configuration runs in its own subprocess (its peak RSS is its own: the rusage that os.wait4 returns for it), into a
fresh output folder; the stage seconds come from its report.json. The matmul rate is measured in this process
before and after, so the figures can be compared across machines and loads as a ratio.

  PYTHONPATH=. python benchmarks/image_to_3d.py                       # the demo config (tiny random model)
  PYTHONPATH=. python benchmarks/image_to_3d.py --configs demo,full   # + the full-size model (random weights)

`full` is configs/image_to_3d.py with random full-size weights at reduced work for a CPU: 1 instance, 2 DDIM
steps, the given elevation (30, one round), NeuS (neus_fast) at 200 steps; its seconds per DDIM step and per
NeuS step are what scale to the real settings (50 steps, 4 instances, 800 NeuS steps).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.evaluate import matmul_gflops  # noqa: E402  (the in-run matmul rate, one definition)

CONFIGS = {
    'demo': ['--config=configs/image_to_3d_demo.py'],
    'full': ['--config=configs/image_to_3d.py', f'--config.input={ROOT}/hv_jax/assets/demo/bell_photo.jpg',
             '--config.checkpoint=random', '--config.sample.model=full', '--config.sample.sample_num=1',
             '--config.sample.sample_steps=2', '--config.elevation=30',
             '--config.neus.train.total_steps=200', '--config.neus.train.decay_interval=200',
             # random full-size weights give noise views with no background for `plain` to find: the original's
             # white rule masks them (near-full masks), which costs NeuS the same per step
             '--config.neus.matting=white'],
}


def run(name: str, out: str) -> dict:
  cmd = [sys.executable, '-m', 'hv_jax.image_to_3d', *CONFIGS[name], f'--config.output_dir={out}']
  t0 = time.time()
  with open(os.path.join(out, 'stderr.txt'), 'w+') as err:
    child = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL,
                             stderr=err)
    _, status, usage = os.wait4(child.pid, 0)     # this child's own rusage (and its waited-for children)
    wall = time.time() - t0
    if os.waitstatus_to_exitcode(status):       # reported, and the other configs still run
      err.seek(0)
      lines = err.read().strip().splitlines()
      return {'failed': lines[-1] if lines else f'exit status {status}'}
  reports = [json.load(open(os.path.join(out, d, 'report.json'))) for d in os.listdir(out)
             if os.path.isfile(os.path.join(out, d, 'report.json'))]
  return {'wall_s': wall, 'peak_rss_gib': usage.ru_maxrss / 2 ** 20, 'seconds': reports[0]['seconds']}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--configs', default='demo')
  a = p.parse_args()
  names = [n for n in a.configs.split(',') if n]
  rate0 = matmul_gflops()
  results = {}
  for n in names:
    with tempfile.TemporaryDirectory() as out:
      results[n] = run(n, out)
  rate1 = matmul_gflops()
  rate = max(rate0, rate1)
  print(f'in-run float32 2048^3 matmul: {rate0:.1f} GFLOP/s before, {rate1:.1f} after (best {rate:.1f})')
  print('| config | stage | seconds | seconds x matmul GFLOP/s / 1000 |')
  print('|---|---|---|---|')
  for n, r in results.items():
    if 'failed' in r:
      print(f'| {n} | failed: {r["failed"]} | | |')
      continue
    for stage, sec in r['seconds'].items():
      print(f'| {n} | {stage} | {sec:.1f} | {sec * rate / 1000:.2f} |')
    print(f'| {n} | (process wall, incl. start-up) | {r["wall_s"]:.1f} | {r["wall_s"] * rate / 1000:.2f} |')
    print(f'| {n} | peak RSS GiB | {r["peak_rss_gib"]:.2f} | |')
  return 1 if any('failed' in r for r in results.values()) else 0


if __name__ == '__main__':
  sys.exit(main())
