"""One NeuS training step (render + losses + AdamW) for configs/neus.py and configs/neus_fast.py.

Each config runs in its own subprocess (so peak RSS is its own): compile time, steady-state seconds per
step, rays/s, model FLOPs (exact dot count of the jaxpr, the grid field's gathers not counted), the fraction
of an in-run float32 matmul, XLA temp buffers and peak RSS; and seconds per step as `fit` runs them,
STEPS_PER_CALL steps per compiled call. Rays are the real 16 cameras' rays with random
colours and masks; the params are a fresh init (the step's cost does not depend on the values).

  PYTHONPATH=. python benchmarks/neus_step.py                        # both configs
  PYTHONPATH=. python benchmarks/neus_step.py --configs neus_fast --repeats 20
  PYTHONPATH=. python benchmarks/neus_step.py --torch --repeats 1          # + the original PyTorch step
"""
from __future__ import annotations

import argparse
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
  from hv_jax import cli, settings
  from hv_jax.neus import fields, pipeline, train

  s = settings.from_dict(pipeline.ReconstructSettings,
                         cli.load_config(os.path.join(ROOT, 'configs', f'{name}.py')).to_dict())
  cfg, tc, lc = s.neus, s.train, s.loop_config()
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
  # as fit runs it: STEPS_PER_CALL steps per compiled call, each on its own rays; skipped where one call would
  # take over a minute (configs/neus.py on a CPU)
  k = train.STEPS_PER_CALL
  t_compile_multi = step_in_calls = None
  if min(times) * k < 60:
    table = {name: jnp.asarray(v) for name, v in (('rays_o', o), ('rays_d', d),
                                                  ('rgb', rng.random((len(o), 3), np.float32)),
                                                  ('mask', (rng.random((len(o), 1)) > 0.5).astype(np.float32)))}
    indices = jnp.asarray(np.stack([rng.choice(len(o), n, replace=False) for _ in range(k)]), jnp.int32)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(k, dtype=jnp.uint32))
    t0 = time.perf_counter()
    count = np.int32(k)
    multi = train.train_steps_indexed.lower(state, table, indices, keys, count, cfg=cfg, tc=tc).compile()
    t_compile_multi = time.perf_counter() - t0
    state, m = multi(state, table, indices, keys, count)
    jax.block_until_ready(m)
    per_step = []
    for _ in range(max(1, repeats // k)):
      t = time.perf_counter()
      state, m = multi(state, table, indices, keys, count)
      jax.block_until_ready(m)
      per_step.append((time.perf_counter() - t) / k)
    step_in_calls = min(per_step)
  peak = matmul_peak(2048, 5)
  best = min(times)
  return {'config': name, 'rays': n, 'samples_per_ray': cfg.n_samples + cfg.n_importance,
          'compile_s': t_compile, 'step_s': best, 'median_step_s': float(np.median(times)),
          'rays_per_s': n / best, 'model_gflop': flops / 1e9, 'gflops': flops / best / 1e9,
          'matmul_gflops': peak, 'fraction_of_matmul': flops / best / 1e9 / peak,
          'xla_temp_gib': temp, 'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
          'steps_total': tc.total_steps, 'projected_train_min': best * tc.total_steps / 60,
          'steps_per_call': k, 'compile_steps_per_call_s': t_compile_multi, 'step_s_in_calls_of_k': step_in_calls}


def torch_original(ref: str, repeats: int):
  """The original NeuSRenderer (HarmonyView renderer/renderer.py) at configs/neus.yaml settings: one training
  step = render_with_loss on 3584 + 512 rays, backward, AdamW. Imports that a CPU step never uses
  (tinycudann, lightning, carvekit helpers, ...) are stubbed."""
  import types
  import numpy as np
  import torch
  torch.set_num_threads(os.cpu_count())

  def stub(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
  for name in ('tinycudann', 'cv2', 'raymarching', 'ldm', 'skimage'):
    stub(name)
  stub('pytorch_lightning', LightningModule=torch.nn.Module)
  stub('omegaconf', OmegaConf=object)
  stub('skimage.io', imread=None, imsave=None)
  stub('ldm.util', instantiate_from_config=None)
  stub('ldm.base_utils', read_pickle=None, concat_images_list=None)
  stub('renderer.ngp_renderer', NGPNetwork=None)
  sys.path.insert(0, ref)
  from renderer.renderer import NeuSRenderer
  sys.path.insert(0, ROOT)
  from hv_jax.neus import data as neus_data
  torch.manual_seed(0)
  model = NeuSRenderer(4096, 4096, lambda_eikonal_loss=0.1, lambda_rgb_loss=0.5, lambda_mask_loss=1.0)
  opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
  n = 4096
  Ks, poses, _ = neus_data.default_cameras()
  o, d = neus_data.make_rays(Ks, poses, 256, 256)
  rng = np.random.default_rng(0)
  idx = rng.choice(len(o), n, replace=False)
  batch = {'rays_o': torch.from_numpy(o[idx].copy()), 'rays_d': torch.from_numpy(d[idx].copy()),
           'rgb': torch.from_numpy(rng.random((n, 3), np.float32)),
           'mask': torch.from_numpy((rng.random((n, 1)) > 0.5).astype(np.float32))}

  def step():
    loss, _ = model.render_with_loss(batch, is_train=True, step=100)
    opt.zero_grad()
    loss.backward()
    opt.step()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return {'config': 'torch original (configs/neus.yaml)', 'rays': n, 'samples_per_ray': 128,
          'step_s': min(times), 'rays_per_s': n / min(times),
          'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 'steps_total': 2000,
          'projected_train_min': min(times) * 2000 / 60}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--configs', default='neus,neus_fast')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--torch', action='store_true', help='also time the original PyTorch NeuSRenderer step')
  p.add_argument('--torch-ref', default='/tmp/ref', help='checkout of the original code (renderer/ package)')
  p.add_argument('--one', default='', help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.one == 'torch':
    print('RESULT ' + json.dumps(torch_original(a.torch_ref, a.repeats)), flush=True)
    return
  if a.one:
    print('RESULT ' + json.dumps(one(a.one, a.repeats)), flush=True)
    return
  import jax
  print(f'jax {jax.__version__} {jax.devices()[0].platform}, {os.cpu_count()} cpus', flush=True)
  rows = []
  names = a.configs.split(',') + (['torch'] if a.torch else [])
  for name in names:
    r = subprocess.run([sys.executable, __file__, '--one', name, '--repeats', str(a.repeats), '--torch-ref', a.torch_ref],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    line = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')]
    if r.returncode or not line:
      print(f'{name}: failed\n{r.stderr[-3000:]}')
      continue
    row = json.loads(line[0][7:])
    rows.append(row)
    print(json.dumps(row), flush=True)
  print('\n| config | rays/step | samples/ray | s/step | s/step in calls of K (K) | rays/s | GFLOP/step '
        '| fraction of matmul | XLA temp GiB | peak RSS GiB | projected training |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    r = dict({'model_gflop': float('nan'), 'fraction_of_matmul': float('nan'), 'xla_temp_gib': float('nan')}, **r)
    in_calls = r.get('step_s_in_calls_of_k')
    in_calls = f"{in_calls:.3f} ({r['steps_per_call']})" if in_calls else 'n/a'
    best = min(r['step_s'], r.get('step_s_in_calls_of_k') or r['step_s'])
    print(f"| {r['config']} | {r['rays']} | {r['samples_per_ray']} | {r['step_s']:.3f} | {in_calls} | {r['rays_per_s']:.0f} "
          f"| {r['model_gflop']:.1f} | {r['fraction_of_matmul']:.2f} | {r['xla_temp_gib']:.2f} "
          f"| {r['peak_rss_gib']:.2f} | {best * r['steps_total'] / 60:.1f} min ({r['steps_total']} steps) |")


if __name__ == '__main__':
  main()
