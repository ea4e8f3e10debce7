"""One NeuS training step (render + losses + AdamW) for configs/neus.py and configs/neus_fast.py.

Each config runs in its own subprocess (so peak RSS is its own): compile time, steady-state seconds per
step, rays/s, model FLOPs (exact dot count of the jaxpr, the grid field's gathers not counted), the fraction
of an in-run float32 matmul, XLA temp buffers and peak RSS. Rays are the real 16 cameras' rays with random
colours and masks; the params are a fresh init (the step's cost does not depend on the values).

  PYTHONPATH=. python benchmarks/neus_step.py                        # both configs
  PYTHONPATH=. python benchmarks/neus_step.py --configs neus_fast --repeats 20
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one(name: str, repeats: int):
  sys.path.insert(0, ROOT)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import jax
  import jax.numpy as jnp
  import numpy as np
  from unet import jaxpr_flops, matmul_peak
  from hv_jax.neus import data as neus_data
  from hv_jax.neus import fields, pipeline, train

  config = importlib.import_module(f'configs.{name}').get_config()
  cfg, tc, lc = pipeline.configs_from(config)
  n = lc.batch_num + lc.fg_num
  Ks, poses, _ = neus_data.default_cameras()
  o, d = neus_data.make_rays(Ks, poses, 256, 256)
  rng = np.random.default_rng(0)
  idx = rng.choice(len(o), n, replace=False)
  batch = {'rays_o': jnp.asarray(o[idx]), 'rays_d': jnp.asarray(d[idx]),
           'rgb': jnp.asarray(rng.random((n, 3), np.float32)),
           'mask': jnp.asarray((rng.random((n, 1)) > 0.5).astype(np.float32))}
  state = train.init_state(fields.init_params(jax.random.PRNGKey(0), cfg), tc)
  key = jax.random.PRNGKey(1)
  flops = jaxpr_flops(jax.make_jaxpr(lambda s, b, k: train._step(s, b, k, cfg, tc))(state, batch, key).jaxpr)
  t0 = time.perf_counter()
  lowered = train.train_step.lower(state, batch, key, cfg=cfg, tc=tc)
  compiled = lowered.compile()
  t_compile = time.perf_counter() - t0
  try:
    temp = compiled.memory_analysis().temp_size_in_bytes / 2 ** 30
  except Exception:  # noqa: BLE001 - not every backend reports it
    temp = float('nan')
  state, m = compiled(state, batch, key)
  jax.block_until_ready(m)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    state, m = compiled(state, batch, key)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  peak = matmul_peak(2048, 5)
  best = min(times)
  return {'config': name, 'rays': n, 'samples_per_ray': cfg.n_samples + cfg.n_importance,
          'compile_s': t_compile, 'step_s': best, 'median_step_s': float(np.median(times)),
          'rays_per_s': n / best, 'model_gflop': flops / 1e9, 'gflops': flops / best / 1e9,
          'matmul_gflops': peak, 'fraction_of_matmul': flops / best / 1e9 / peak,
          'xla_temp_gib': temp, 'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
          'steps_total': tc.total_steps, 'projected_train_min': best * tc.total_steps / 60}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--configs', default='neus,neus_fast')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--one', default='', help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.one:
    print('RESULT ' + json.dumps(one(a.one, a.repeats)), flush=True)
    return
  import jax
  print(f'jax {jax.__version__} {jax.devices()[0].platform}, {os.cpu_count()} cpus', flush=True)
  rows = []
  for name in a.configs.split(','):
    r = subprocess.run([sys.executable, __file__, '--one', name, '--repeats', str(a.repeats)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    line = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')]
    if r.returncode or not line:
      print(f'{name}: failed\n{r.stderr[-3000:]}')
      continue
    row = json.loads(line[0][7:])
    rows.append(row)
    print(json.dumps(row), flush=True)
  print('\n| config | rays/step | samples/ray | s/step | rays/s | GFLOP/step | fraction of matmul '
        '| XLA temp GiB | peak RSS GiB | projected training |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['config']} | {r['rays']} | {r['samples_per_ray']} | {r['step_s']:.3f} | {r['rays_per_s']:.0f} "
          f"| {r['model_gflop']:.1f} | {r['fraction_of_matmul']:.2f} | {r['xla_temp_gib']:.2f} "
          f"| {r['peak_rss_gib']:.2f} | {r['projected_train_min']:.1f} min ({r['steps_total']} steps) |")


if __name__ == '__main__':
  main()
