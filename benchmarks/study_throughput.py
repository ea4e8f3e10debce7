"""Throughput of a study's sampling over 1, 2, 4, 8 devices, against the no-communication model.

The same B instances (the tiny demo model, random weights, HarmonyView guidance) are sampled by the study's
jitted sampler with the batch split over D forced CPU host devices (one subprocess per D:
XLA_FLAGS=--xla_force_host_platform_device_count=D must be set before JAX starts). Instances never
communicate, so the model is: time(D) = time(1) x (compute per device) / (cores per device) — on this
machine all D "devices" share the same cores, so the model predicts a FLAT time for every D, and any
growth is the overhead of sharding (it should be ~0). Also prints the model FLOPs per instance (the
exact dot/conv count of the jaxpr) and the figures for the full-size model that docs/scaling.md uses.

  PYTHONPATH=. python benchmarks/study_throughput.py                  # D = 1,2,4,8, 8 instances, 4 steps
  PYTHONPATH=. python benchmarks/study_throughput.py --devices 1,8 --instances 16 --steps 10
  PYTHONPATH=. python benchmarks/study_throughput.py --full-flops     # FLOPs per unit, full-size model (no run)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent('''
    import json, sys, time
    import numpy as np, jax, jax.numpy as jnp
    sys.path.insert(0, 'benchmarks')
    from unet import jaxpr_flops, matmul_peak
    from hv_jax.sampling import pipeline
    from hv_jax.sampling.sampler import SamplerConfig, instance_keys
    from hv_jax.models.config import ModelConfig
    from hv_jax.models.init import random_params
    b, steps, repeats = %(instances)d, %(steps)d, %(repeats)d
    cfg = ModelConfig.tiny()
    params = random_params(cfg, 0)
    sconf = SamplerConfig(steps=steps, view_chunk=%(view_chunk)d)
    mesh_devices = tuple(jax.devices())
    fn = pipeline.compiled_sampler(cfg, sconf, mesh_devices, False)
    rng = np.random.default_rng(0)
    mesh = pipeline.parallel.make_mesh(mesh_devices)
    args = pipeline.parallel.shard_batch([rng.uniform(-1, 1, (b, 64, 64, 3)).astype(np.float32),
                                          np.full(b, 0.5, np.float32),
                                          np.asarray(instance_keys(0, np.zeros(b, int), np.arange(b))),
                                          np.tile(np.float32([[2, 1]]), (b, 1))], mesh)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, *args, jnp.float32(1)))
    compile_s = time.perf_counter() - t0
    hlo = fn.lower(params, *args, jnp.float32(1)).compile().as_text()   # cached: no second compile
    collectives = sum(hlo.count(op + '(') for op in ('all-reduce', 'all-gather', 'all-to-all', 'reduce-scatter',
                                                     'collective-permute'))
    ts = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn(params, *args, jnp.float32(1)))
      ts.append(time.perf_counter() - t0)
    from hv_jax.sampling.sampler import Sampler
    s = Sampler(cfg, sconf)
    jaxpr = jax.make_jaxpr(lambda p, *a: s.sample(p, *a))(params, *[np.asarray(a) for a in args], jnp.float32(1))
    print(json.dumps({'devices': jax.device_count(), 'instances': b, 'compile_and_first_s': compile_s,
                      'best_s': min(ts), 'median_s': sorted(ts)[len(ts) // 2],
                      'flops_per_instance': jaxpr_flops(jaxpr.jaxpr) / b,
                      'matmul_gflops': matmul_peak(1024, 3),
                      'shards': len(out.sharding.device_set), 'collectives': collectives}))
''')


def full_flops():
  """Exact executed FLOPs of one full-size unit (abstract shapes only: nothing is allocated or run)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from unet import jaxpr_flops
  from hv_jax.models.config import ModelConfig
  from hv_jax.models.init import random_params
  from hv_jax.sampling.sampler import Sampler, SamplerConfig
  cfg = ModelConfig.full()
  params = jax.eval_shape(lambda: random_params(cfg, 0))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  print(f'params {n / 1e6:.1f} M = {n * 4 / 2 ** 30:.2f} GiB float32')
  for guidance in ('harmonyview', 'cfg'):
    flops = {}
    for steps in (1, 50):
      s = Sampler(cfg, SamplerConfig(steps=steps, guidance=guidance, view_chunk=4))
      args = (jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), jnp.float32),
              jax.ShapeDtypeStruct((1,), jnp.float32), jax.ShapeDtypeStruct((1, 2), jnp.uint32),
              jax.ShapeDtypeStruct((1, s.config.num_scales), jnp.float32), jnp.float32(1))
      flops[steps] = jaxpr_flops(jax.make_jaxpr(lambda p, *a: s.sample(p, *a))(params, *args).jaxpr)
    step = (flops[50] - flops[1]) / 49
    print(f'{guidance}: {step / 1e12:.2f} TFLOP per DDIM step, {(flops[1] - step) / 1e12:.2f} TFLOP encode + decode '
          f'+ CLIP, {flops[50] / 1e12:.1f} TFLOP per unit of 50 steps')


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--devices', default='1,2,4,8')
  p.add_argument('--instances', type=int, default=8, help='instances per call (a multiple of every D)')
  p.add_argument('--steps', type=int, default=4)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--view_chunk', type=int, default=0)
  p.add_argument('--full-flops', action='store_true', help='only print the full-size FLOPs per unit')
  args = p.parse_args()
  if args.full_flops:
    return full_flops()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  rows = []
  for d in [int(x) for x in args.devices.split(',')]:
    if args.instances % d:
      sys.exit(f'--instances {args.instances} is not a multiple of {d} devices')
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={d}', JAX_PLATFORMS='cpu',
               PYTHONPATH=root)
    code = CHILD % dict(instances=args.instances, steps=args.steps, repeats=args.repeats, view_chunk=args.view_chunk)
    r = subprocess.run([sys.executable, '-c', code], cwd=root, env=env, capture_output=True, text=True)
    if r.returncode:
      sys.exit(r.stderr[-3000:])
    rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(json.dumps(rows[-1]), flush=True)
  base = rows[0]
  print(f'\n{os.cpu_count()} CPU cores; tiny demo model, {args.instances} instances x {args.steps} DDIM steps per '
        f'call, HarmonyView guidance; model FLOPs per instance {base["flops_per_instance"] / 1e9:.2f} G')
  print('| devices | shards | collectives in the HLO | compile + first call s | best s | instances/hour | '
        'time vs 1 device | achieved GFLOP/s | fraction of in-run matmul |')
  print('|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    gflops = r['flops_per_instance'] * r['instances'] / r['best_s'] / 1e9
    print(f"| {r['devices']} | {r['shards']} | {r['collectives']} | {r['compile_and_first_s']:.1f} | {r['best_s']:.2f} | "
          f"{3600 * r['instances'] / r['best_s']:.0f} | {r['best_s'] / base['best_s']:.3f} | {gflops:.1f} | "
          f"{gflops / r['matmul_gflops']:.3f} |")


if __name__ == '__main__':
  main()
