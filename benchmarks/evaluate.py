"""Seconds to evaluate objects × instances with `python -m hv_jax.evaluate --config.random_weights=True`, per metric.

  PYTHONPATH=. python benchmarks/evaluate.py --gt PATH/gso-eval [--objects 30] [--instances 4] [--keep DIR]
  PYTHONPATH=. python benchmarks/evaluate.py --keep DIR --report      # the table of the objects done so far

Full-size metric networks with random weights (CLIP ViT-L/14 for the CD score, VGG16 LPIPS, RAFT-large with
20 iterations for E_flow) on real GSO-eval views: every object's 16 GT views, and N generated strips made
from them with noise. GT folders are reused cyclically when fewer than --objects exist. The first object
of each sitting also pays compilation, so those objects are reported apart; the other objects give the
steady-state seconds per object, and the total for --objects is measured (never extrapolated) when --objects
objects are run. Also prints a float32 matmul rate measured in the same run (kept per sitting in
DIR/sittings.json), to compare figures across machines.

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


def print_table(work: str, total: float | None = None) -> None:
  """Per-metric seconds of the objects with results in `work` (all of them once the run is complete)."""
  objects = os.path.join(work, 'out', 'objects')
  files = sorted(os.listdir(objects)) if os.path.isdir(objects) else []
  if not files:
    raise SystemExit(f'no object results in {work} yet')
  spec = json.load(open(os.path.join(work, 'inputs.json')))
  records = [json.load(open(os.path.join(objects, f))) for f in files]
  metrics = sorted({m for r in records for m in r['seconds']})
  print(f'\n{len(records)} of {spec["objects"]} objects x {spec["instances"]} instances done, random weights')
  sittings_file = os.path.join(work, 'sittings.json')
  for i, st in enumerate(json.load(open(sittings_file)) if os.path.isfile(sittings_file) else []):
    print(f'sitting {i + 1}, started {st["started"]} with {st["objects_done_before"]} objects done: in-run float32 '
          f'matmul {st["matmul_gflops"]} GFLOP/s')
  if total is not None:
    print(f'wall time of this sitting (weights init, compilation, the objects not done before): {total:.1f} s')
  first = [r for r in records if r['seconds_include_compilation']]   # each sitting's first object compiles
  others = [r for r in records if not r['seconds_include_compilation']]
  print(f'{len(first)} of them first in a sitting (their seconds include compilation)')
  print('| metric | first objects of sittings: mean s (compiles) | other objects: mean s | median s | '
        'CPU s / wall s | sum over all objects s |')
  print('|---|---|---|---|---|---|')
  f = lambda v, fn=np.mean: f'{fn(v):.2f}' if v else '-'
  for m in metrics:
    wall = [r['seconds'][m] for r in others if m in r['seconds']]
    cpu = [r['cpu_seconds'][m] / r['seconds'][m] for r in others if m in r.get('cpu_seconds', {})]
    print(f'| {m} | {f([r["seconds"][m] for r in first if m in r["seconds"]])} | {f(wall)} | '
          f'{f(wall, np.median)} | {f(cpu)} | {sum(r["seconds"].get(m, 0) for r in records):.1f} |')
  object_s = lambda rs: [sum(r['seconds'].values()) for r in rs]   # all metrics of each object
  print(f'| all | {f(object_s(first))} | {f(object_s(others))} | {f(object_s(others), np.median)} | | '
        f'{sum(object_s(records)):.1f} |')
  no_cpu = [r['object'] for r in others if 'cpu_seconds' not in r]
  if no_cpu:
    print(f'CPU s / wall s is over the objects that recorded CPU seconds (not: {", ".join(no_cpu)})')
  if others:
    median = np.median(object_s(others))
    slow = [r['object'] for r, s in zip(others, object_s(others)) if s > 1.25 * median]
    if slow:
      print(f'objects over 1.25x the median total (the CPU was likely shared): {", ".join(slow)}')
  # Instance k carries noise 0.02 * (k + 1): a sound metric gets strictly worse with k, even with random
  # LPIPS/RAFT weights.
  worse = {'psnr': -1, 'ssim': -1, 'lpips': 1, 'e_flow': 1}
  broken = [(r['object'], m) for r in records for m, sign in worse.items()
            if m in r['per_instance'] and not np.all(sign * np.diff(r['per_instance'][m]) > 0)]
  print(f'PSNR and SSIM fall, LPIPS and E_flow rise strictly with the noise in '
        f'{len(records) - len({o for o, _ in broken})} of {len(records)} objects'
        + (f'; not in {", ".join(f"{o}:{m}" for o, m in broken)}' if broken else ''))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--gt', help='GSO-eval folder')
  p.add_argument('--objects', type=int, default=30)
  p.add_argument('--instances', type=int, default=4)
  p.add_argument('--flow_batch', type=int, default=None)
  p.add_argument('--keep', default='', help='inputs and results in this folder; a rerun resumes there')
  p.add_argument('--report', action='store_true', help='only print the table of the objects done in --keep')
  a = p.parse_args()
  if a.report:
    if not a.keep:
      raise SystemExit('--report needs --keep DIR')
    return print_table(os.path.abspath(a.keep))
  if not a.gt:
    p.error('--gt is required')
  from hv_jax import atomic, evaluate
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
    done = len(os.listdir(os.path.join(out, 'objects'))) if os.path.isdir(os.path.join(out, 'objects')) else 0
    # A sitting may be stopped before it prints its table: its matmul rate is kept now, beside its results.
    sittings_file = os.path.join(work, 'sittings.json')
    sittings = json.load(open(sittings_file)) if os.path.isfile(sittings_file) else []
    sittings.append({'started': time.strftime('%Y-%m-%d %H:%M:%S'), 'objects_done_before': done,
                     'matmul_gflops': round(gflops, 1)})
    atomic.write_json(sittings_file, sittings)
    print(f'sitting {len(sittings)}: {done} objects done before; in-run float32 matmul {gflops:.1f} GFLOP/s',
          flush=True)
    argv = [f'--config.pred={os.path.join(work, "pred")}', f'--config.gt={os.path.join(work, "gt")}',
            f'--config.out={out}', '--config.random_weights=True'] + ([] if a.keep else ['--config.overwrite=True'])
    if a.flow_batch:
      argv += [f'--config.flow_batch={a.flow_batch}']
    t0 = time.perf_counter()
    assert evaluate.main(argv) == 0
    total = time.perf_counter() - t0
    print_table(work, total)
  finally:
    if not a.keep:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  main()
