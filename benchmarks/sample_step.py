"""One full HarmonyView denoise step for one instance at full size (48 UNet rows), random weights.

Times `Sampler.denoise_step` (volumes built once, the three guidance branches as ONE vmapped UNet call,
then the DDIM update) against the same step with the three branches as three separate UNet calls, and the
memory/speed knobs (bfloat16 compute, sequential view chunks, remat). Reports compile time, steady-state
seconds, model FLOPs (exact dot/conv count of the jaxpr), FLOP/s as a fraction of a float32 matmul
measured in the same run, XLA's temp-buffer size and the process's peak RSS.

  PYTHONPATH=. python benchmarks/sample_step.py                          # fused vs separate, float32
  PYTHONPATH=. python benchmarks/sample_step.py --variants fused,bf16,chunk16,remat
  PYTHONPATH=. python benchmarks/sample_step.py --tiny                  # quick smoke run (tiny model)
  PYTHONPATH=. python benchmarks/sample_step.py --variants chunk4,separate --repeats 3 --interleave
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet import jaxpr_flops, matmul_peak, timed  # noqa: E402  (same directory)

from hv_jax.models.config import ModelConfig  # noqa: E402
from hv_jax.models.init import random_params  # noqa: E402
from hv_jax.sampling import guidance  # noqa: E402
from hv_jax.sampling.sampler import Condition, Sampler, SamplerConfig  # noqa: E402

VARIANTS = {   # name: (SamplerConfig overrides, fused?)
    'fused': ({}, True),
    'separate': ({}, False),
    'bf16': ({'dtype': 'bfloat16'}, True),
    'chunk16': ({'view_chunk': 16}, True),   # a no-op for one instance (16 rows): chunks split rows
    'chunk8': ({'view_chunk': 8}, True),     # 2 sequential calls of 8 views x 3 branches = 24 UNet rows
    'chunk4': ({'view_chunk': 4}, True),     # 4 sequential calls of 12 UNet rows
    'remat': ({'remat': True}, True),
}


def rss_gib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def step_fn(sampler: Sampler, fused: bool):
  """(params, x_t, cond, scales) -> x_prev for DDIM index 25 of 50 (t = 501)."""
  if fused:
    return lambda p, x, c, s: sampler.denoise_step(p, x, c, jnp.int32(25), s, 1.0, jnp.zeros_like(x))

  def separate(p, x, c, s):
    from hv_jax.sampling.ddim import ddim_update
    t = jnp.full((x.shape[0],), sampler.tables.timesteps[25], jnp.int32)
    mult = guidance.branch_scales('harmonyview')
    # three UNet calls of 16 rows each (volumes still shared): the original's batching, split up
    eps = jnp.concatenate([sampler.branch_eps(p, x, t, c, mult[k:k + 1]) for k in range(3)], 0)
    sc = jnp.moveaxis(s.reshape(s.shape[:1] + (1, 1, 1, 1) + s.shape[1:]), -1, 0)
    return ddim_update(x, guidance.combine('harmonyview', eps, sc), sampler.tables, jnp.int32(25), 1.0,
                       jnp.zeros_like(x))
  return separate


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--variants', default='fused,separate', help=f'comma list of {sorted(VARIANTS)}')
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument('--interleave', action='store_true',
                 help='compile every variant first, then time them round-robin (robust ratios on a shared machine)')
  p.add_argument('--tiny', action='store_true', help='the demo model instead of the full size (smoke run)')
  args = p.parse_args()
  if args.tiny:
    cfg = ModelConfig.tiny()
  else:
    cfg = ModelConfig.full()
  t0 = time.time()
  params = random_params(cfg, 0)
  print(f'jax {jax.__version__} {jax.devices()[0].platform}, {os.cpu_count()} cpus; '
        f'{"tiny" if args.tiny else "full-size"} model, {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.0f}M '
        f'params (random init {time.time() - t0:.0f} s)', flush=True)
  rng = np.random.default_rng(0)
  n, h = cfg.view_num, cfg.latent_size
  x = jnp.asarray(rng.normal(size=(1, n, h, h, 4)), jnp.float32)
  cond = Condition(clip_embed=jnp.asarray(rng.normal(size=(1, 1, cfg.unet.context_dim)), jnp.float32),
                   x_input=jnp.asarray(rng.normal(size=(1, h, h, 4)), jnp.float32),
                   v_embed=jnp.asarray(rng.normal(size=(1, n, 4)), jnp.float32))
  scales = jnp.asarray([[2., 1.]], jnp.float32)
  base = Sampler(cfg, SamplerConfig(steps=50))
  # model FLOPs: the literal formulation's dot/conv count (what the original computes); the fast lowerings
  # (phase-split transposed convs, folded depth attention) execute fewer
  from unet import set_impl
  set_impl('reference')
  flops = jaxpr_flops(jax.make_jaxpr(step_fn(base, True))(params, x, cond, scales).jaxpr)
  set_impl('fast')
  executed = jaxpr_flops(jax.make_jaxpr(step_fn(base, True))(params, x, cond, scales).jaxpr)
  peaks = [matmul_peak(2048, 5)]
  rows = []
  names = args.variants.split(',')
  compiled_all = {}
  for name in names:
    over, fused = VARIANTS[name]
    sampler = Sampler(cfg, SamplerConfig(steps=50, **over))
    t0 = time.time()
    compiled = jax.jit(step_fn(sampler, fused)).lower(params, x, cond, scales).compile()
    t_compile = time.time() - t0
    try:
      temp = compiled.memory_analysis().temp_size_in_bytes / 2 ** 30
    except Exception:  # noqa: BLE001
      temp = float('nan')
    jax.block_until_ready(compiled(params, x, cond, scales))
    if args.interleave:   # timed below, round-robin
      compiled_all[name] = (compiled, t_compile, temp)
      print(f'{name}: compile {t_compile:.0f} s, XLA temp {temp:.2f} GiB', flush=True)
      continue
    times = timed(lambda: compiled(params, x, cond, scales), args.repeats)
    peaks.append(matmul_peak(2048, 5))
    rows.append((name, t_compile, min(times), temp, rss_gib()))
    print(f'{name}: compile {t_compile:.0f} s, times {", ".join("%.2f" % t for t in times)} s, XLA temp {temp:.2f} GiB, '
          f'RSS so far {rss_gib():.2f} GiB', flush=True)
  if args.interleave:
    # Round-robin: variant A, B, A, B, ... so that slow phases of a shared machine hit every variant alike;
    # the per-round ratio to the first variant is the robust figure.
    times = {n: [] for n in names}
    for r in range(args.repeats):
      for n in names:
        times[n] += timed(lambda: compiled_all[n][0](params, x, cond, scales), 1)
      peaks.append(matmul_peak(2048, 5))
      print(f'round {r}: ' + ', '.join(f'{n} {times[n][-1]:.2f} s ({times[n][-1] / times[names[0]][-1]:.3f})'
                                      for n in names), flush=True)
    for n in names:
      rows.append((n, compiled_all[n][1], min(times[n]), compiled_all[n][2], rss_gib()))
      ratios = [a / b for a, b in zip(times[n], times[names[0]])]
      print(f'{n}: best {min(times[n]):.2f} s, median {sorted(times[n])[len(times[n]) // 2]:.2f} s, per-round ratio '
            f'to {names[0]}: {", ".join("%.3f" % q for q in ratios)}', flush=True)
  peak = max(peaks)
  print(f'\nmodel FLOPs per step (volumes + 48 UNet rows + update): {flops / 1e12:.3f} T (executed by the fast '
        f'lowering: {executed / 1e12:.3f} T); float32 matmul peak '
        f'{peak:.1f} GFLOP/s (best of {len(peaks)} in-run measurements)\n')
  print('| variant | compile s | step s | GFLOP/s | fraction of matmul peak | XLA temp GiB | peak RSS GiB |')
  print('|---|---|---|---|---|---|---|')
  for name, tc, t, temp, rss in rows:
    rate = flops / t / 1e9
    print(f'| {name} | {tc:.0f} | {t:.2f} | {rate:.1f} | {rate / peak:.3f} | {temp:.2f} | {rss:.2f} |')


if __name__ == '__main__':
  main()
