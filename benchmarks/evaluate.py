"""Seconds to evaluate objects × instances with `python -m hv_jax.evaluate --random_weights`, per metric.

  PYTHONPATH=. python benchmarks/evaluate.py --gt PATH/gso-eval [--objects 30] [--instances 4] [--keep DIR]

Full-size metric networks with random weights (CLIP ViT-L/14 for the CD score, VGG16 LPIPS, RAFT-large with
20 iterations for E_flow) on real GSO-eval views: every object's 16 GT views, and N generated strips made
from them with noise. GT folders are reused cyclically when fewer than --objects exist. The first object
also pays compilation, so it is reported apart; the other objects give the steady-state seconds per object,
and the total for --objects is measured (never extrapolated) when --objects objects are run. Also prints a
float32 matmul rate measured in the same run, to compare figures across machines.

With --keep DIR the inputs and results live in DIR and a rerun resumes: objects with results are not
evaluated again (hv_jax.evaluate's resume), so a long CPU run can be spread over several sittings; the
table then sums the per-object seconds each object recorded when it ran (the first object of every sitting
includes that sitting's compilation).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def matmul_gflops(n=2048, repeats=5):
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  jax.block_until_ready(f(a, a))
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(a, a))
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def make_inputs(gt_src: str, work: str, objects: int, instances: int, seed: int = 0):
  from PIL import Image
  from hv_jax.evaluate import to_unit
  names = sorted(d for d in os.listdir(gt_src) if os.path.isfile(os.path.join(gt_src, d, '015.png')))
  if not names:
    raise SystemExit(f'no GSO-eval object folders in {gt_src}')
  rng = np.random.default_rng(seed)
  for i in range(objects):
    src = names[i % len(names)]
    name = src if i < len(names) else f'{src}_{i}'
    os.symlink(os.path.abspath(os.path.join(gt_src, src)), os.path.join(work, 'gt', name))
    views = np.stack([to_unit(np.asarray(Image.open(os.path.join(gt_src, src, f'{k:03}.png')).convert('RGBA')))
                      for k in range(16)])
    os.makedirs(os.path.join(work, 'pred', name))
    for k in range(instances):
      v = np.clip(views + rng.normal(0, 0.02 * (k + 1), views.shape), 0, 1)
      strip = np.concatenate(list((v * 255).round().astype(np.uint8)), axis=1)   # 16 views left to right
      Image.fromarray(strip).save(os.path.join(work, 'pred', name, f'{k}.png'))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--gt', required=True, help='GSO-eval folder')
  p.add_argument('--objects', type=int, default=30)
  p.add_argument('--instances', type=int, default=4)
  p.add_argument('--flow_batch', type=int, default=None)
  p.add_argument('--keep', default='', help='inputs and results in this folder; a rerun resumes there')
  a = p.parse_args()
  from hv_jax import evaluate
  work = os.path.abspath(a.keep) if a.keep else tempfile.mkdtemp(prefix='hv_eval_bench_')
  try:
    marker = os.path.join(work, 'inputs.json')
    spec = {'gt': os.path.abspath(a.gt), 'objects': a.objects, 'instances': a.instances}
    if os.path.isfile(marker) and json.load(open(marker)) != spec:
      raise SystemExit(f'{work} holds a benchmark with other settings ({json.load(open(marker))}); '
                       'use another --keep folder')
    if not os.path.isfile(marker):                 # fresh, or inputs interrupted half-written: (re)make them
      for d in ('gt', 'pred', 'out'):
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)
      os.makedirs(os.path.join(work, 'gt'))
      make_inputs(a.gt, work, a.objects, a.instances)
      with open(marker, 'w') as f:
        json.dump(spec, f)
    gflops = matmul_gflops()
    out = os.path.join(work, 'out')
    argv = ['--pred', os.path.join(work, 'pred'), '--gt', os.path.join(work, 'gt'), '--out', out,
            '--random_weights'] + ([] if a.keep else ['--overwrite'])
    if a.flow_batch:
      argv += ['--flow_batch', str(a.flow_batch)]
    t0 = time.perf_counter()
    assert evaluate.main(argv) == 0
    total = time.perf_counter() - t0
    records = [json.load(open(os.path.join(out, 'objects', f))) for f in sorted(os.listdir(os.path.join(out, 'objects')))]
    metrics = sorted({m for r in records for m in r['seconds']})
    print(f'\n{a.objects} objects x {a.instances} instances, random weights; in-run float32 matmul '
          f'{gflops:.1f} GFLOP/s')
    print(f'wall time of this sitting (weights init, compilation, the objects not done before): {total:.1f} s')
    print('| metric | first object s (compiles) | later objects: mean s per object | sum over all objects s |')
    print('|---|---|---|---|')
    first = records[0]['object']
    for m in metrics:
      rest = [r['seconds'][m] for r in records if r['object'] != first and m in r['seconds']]
      f0 = next(r['seconds'][m] for r in records if r['object'] == first)
      mean = f'{np.mean(rest):.2f}' if rest else '-'
      print(f'| {m} | {f0:.2f} | {mean} | {sum(r["seconds"][m] for r in records):.1f} |')
  finally:
    if not a.keep:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  main()
