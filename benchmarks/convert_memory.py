"""Peak memory of converting a FULL-SIZE SyncDreamer checkpoint, alone and on the sampler's first use.

  python benchmarks/convert_memory.py [--workdir /tmp/hv_convert_bench] [--keep]
      [--scenarios cli,orbax,first_use,first_use_in_process] [--stage load|compile] [--tiny]

Builds a ~5.6 GB checkpoint with every key, shape and dtype of the real one (tests/fixtures/full_keys.json;
random values), saved as {'state_dict': ...} like the Lightning checkpoint (kept in --workdir between runs
with --keep). Each scenario then runs in a fresh child process, and its peak resident memory is read from
getrusage (ru_maxrss) of that process and, separately, of its own children:

  cli                    the converter CLI alone (python -m convert.syncdreamer ... --quiet)
  orbax                  the sampler's weight setup (configs/gso.py, full size) from the converted orbax folder
  first_use              the same setup given the .ckpt itself: converted on first use (in a child process,
                         convert.syncdreamer.run_in_child, as hv_jax.sample does it now), then loaded
  first_use_in_process   the same, converting in the sampler's own process (what hv_jax.sample did before:
                         convert.syncdreamer.run called in-process), then loaded

"Setup" is what hv_jax.sample does before its first sampling step: load_weights (orbax restore), the params
placed replicated on the device mesh, and with --stage compile (the default) the full 50-step HarmonyView
sampler lowered and compiled for one instance. No step is executed (one full-size step takes ~2 min on a
2-core CPU and adds its XLA temp buffers, 2.4 GiB at batch_view_num=4: docs/speed.md). Needs torch and
~17 GB of free disk (checkpoint + converted copies); CPU only. --tiny runs the same scenarios on the parity
fixtures' tiny checkpoint (a smoke run of the script, seconds per scenario).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCENARIOS = ('cli', 'orbax', 'first_use', 'first_use_in_process')


def build_checkpoint(path: pathlib.Path) -> int:
  import torch
  from hv_jax.sampling import schedule
  keys = json.loads((ROOT / 'tests' / 'fixtures' / 'full_keys.json').read_text())['keys']
  gen = torch.Generator().manual_seed(0)
  sd = {}
  for key, shape, dtype in keys:
    if key == 'betas':
      sd[key] = torch.from_numpy(schedule.betas())
    elif key == 'alphas_cumprod':
      sd[key] = torch.from_numpy(schedule.alphas_cumprod())
    else:
      sd[key] = torch.randn(*shape, generator=gen) * 0.02 if shape else torch.tensor(1.0)
  tmp = path.with_name(path.name + '.partial')
  torch.save({'state_dict': sd, 'global_step': 0}, tmp)
  os.replace(tmp, path)
  n = sum(t.numel() for t in sd.values())
  del sd
  return n


def gib(kib: float) -> float:
  return kib / 2 ** 20


def rss_now_gib() -> float:
  """Current resident memory of this process (VmRSS), GiB."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 2 ** 20
  return float('nan')


# ----------------------------------------------------------------------------- one scenario (child process)

def scenario(name: str, ckpt: pathlib.Path, converted: pathlib.Path, cache: pathlib.Path, stage: str,
             tiny: bool) -> dict:
  """Runs one sampler-setup scenario in THIS process; returns its figures."""
  import jax
  import numpy as np
  sys.path.insert(0, str(ROOT))
  from convert import syncdreamer
  from hv_jax import cli, parallel, settings
  from hv_jax.sampling import pipeline
  from hv_jax.sampling.sampler import Sampler, instance_keys
  rec = {'scenario': name, 'stage': stage}
  c = cli.load_config(ROOT / 'configs' / 'gso.py')
  c.checkpoint = str(converted)
  c.model = 'tiny' if tiny else ''     # '' = the full size, as stored in the checkpoint
  c.progress = False
  rec['rss_before_gib'] = rss_now_gib()   # the sampler process before it touches any weights
  t = time.time()
  if name == 'first_use':
    c.checkpoint, c.checkpoint_cache = str(ckpt), str(cache)
  elif name == 'first_use_in_process':   # the former convert_cached: syncdreamer.run in the sampler's process
    syncdreamer.run(str(ckpt), str(cache), model_config='tiny' if tiny else None, verbose=False)
    c.checkpoint = str(cache)
  c = settings.from_dict(pipeline.SampleSettings, c.to_dict())
  params, model_config, _ = pipeline.load_weights(c, syncdreamer.convert_for_sampler)   # as hv_jax.sample
  mesh = parallel.make_mesh()
  params = jax.block_until_ready(jax.device_put(params, parallel.replicated(mesh)))
  rec['load_s'] = time.time() - t   # (includes the conversion in the first_use* scenarios)
  rec['peak_after_load_gib'] = gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
  if stage == 'compile':
    t = time.time()
    sampler = Sampler(model_config, c.sampler_config())
    keys = np.asarray(instance_keys(int(c.seed), [0], [0]))
    size = model_config.image_size
    arrays = [np.zeros((1, size, size, 3), np.float32), np.full((1,), np.deg2rad(30.0), np.float32), keys,
              np.asarray([[float(c.s1), float(c.s2)]], np.float32)]
    arrays = parallel.shard_batch(arrays, mesh)
    fn = jax.jit(lambda p, img, el, k, sc, eta: sampler.sample(p, img, el, k, sc, eta))
    fn.lower(params, *arrays, np.float32(c.eta)).compile()
    rec['compile_s'] = time.time() - t
  rec['peak_gib'] = gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
  rec['children_peak_gib'] = gib(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
  return rec


# ----------------------------------------------------------------------------- driver

def run_cli(ckpt: pathlib.Path, out: pathlib.Path, tiny: bool) -> dict:
  shutil.rmtree(out, ignore_errors=True)
  t = time.time()
  code = ('import resource, sys, json, subprocess; '
          'r = subprocess.run(sys.argv[1:]); '
          'print("RESULT " + json.dumps({"rc": r.returncode, '
          '"children_peak_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}))')
  r = subprocess.run([sys.executable, '-c', code, sys.executable, '-m', 'convert.syncdreamer', f'--config.ckpt={ckpt}',
                      f'--config.out={out}', '--config.quiet=True', f'--config.model={"tiny" if tiny else "full"}'],
                     cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                     capture_output=True, text=True)
  res = [json.loads(x[7:]) for x in r.stdout.splitlines() if x.startswith('RESULT ')]
  if r.returncode or not res or res[0]['rc']:
    raise SystemExit(f'converter failed: {r.stdout}\n{r.stderr}')
  size = sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 2 ** 30
  return {'scenario': 'cli', 'load_s': time.time() - t, 'peak_gib': res[0]['children_peak_gib'],
          'children_peak_gib': 0.0, 'output_gib': size}


def run_scenario(name, ckpt, converted, cache, stage, tiny) -> dict:
  shutil.rmtree(cache, ignore_errors=True)
  r = subprocess.run([sys.executable, __file__, '--_scenario', name, '--_ckpt', str(ckpt), '--_converted',
                      str(converted), '--_cache', str(cache), '--stage', stage] + (['--tiny'] if tiny else []), cwd=ROOT,
                     env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
  res = [json.loads(x[7:]) for x in r.stdout.splitlines() if x.startswith('RESULT ')]
  if r.returncode or not res:
    raise SystemExit(f'scenario {name} failed (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}')
  shutil.rmtree(cache, ignore_errors=True)
  return res[0]


def table(recs) -> str:
  lines = ['| scenario | stage | wall s (convert + load / compile) | sampler process peak RSS GiB | '
           'conversion child peak RSS GiB | machine peak GiB |', '|---|---|---|---|---|---|']
  for r in recs:
    child = r.get('children_peak_gib', 0.0)
    # The child converts while the sampler process waits at its pre-weights size, then exits before loading.
    machine = max(r['peak_gib'], child + r.get('rss_before_gib', 0.0)) if child else r['peak_gib']
    wall = f"{r['load_s']:.0f}" + (f" / {r['compile_s']:.0f}" if 'compile_s' in r else '')
    lines.append(f"| {r['scenario']} | {r.get('stage', '-')} | {wall} | {r['peak_gib']:.2f} | "
                 f"{child:.2f} | {machine:.2f} |")
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--workdir', default='/tmp/hv_convert_bench')
  p.add_argument('--keep', action='store_true', help='keep the synthetic checkpoint and the conversion')
  p.add_argument('--scenarios', default=','.join(SCENARIOS), help=f'comma list of {SCENARIOS}')
  p.add_argument('--stage', default='compile', choices=('load', 'compile'))
  p.add_argument('--tiny', action='store_true', help='the parity fixtures\' tiny checkpoint (smoke run)')
  for hidden in ('--_scenario', '--_ckpt', '--_converted', '--_cache'):
    p.add_argument(hidden, default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._scenario:
    rec = scenario(args._scenario, pathlib.Path(args._ckpt), pathlib.Path(args._converted),
                   pathlib.Path(args._cache), args.stage, args.tiny)
    print('RESULT ' + json.dumps(rec), flush=True)
    return 0
  names = [s for s in args.scenarios.split(',') if s]
  unknown = set(names) - set(SCENARIOS)
  if unknown:
    p.error(f'unknown scenarios {sorted(unknown)}: use {SCENARIOS}')
  work = pathlib.Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  ckpt, converted = work / 'syncdreamer_full_synthetic.ckpt', work / 'converted'
  if args.tiny:
    ckpt = work / 'syncdreamer_tiny.ckpt'
    shutil.copyfile(ROOT / 'tests' / 'fixtures' / 'parity' / 'syncdreamer_tiny.ckpt', ckpt)
    shutil.rmtree(converted, ignore_errors=True)
  if not ckpt.exists():
    t = time.time()
    n = build_checkpoint(ckpt)
    print(f'built {ckpt} ({n / 1e9:.2f}e9 elements, {ckpt.stat().st_size / 2**30:.2f} GiB) in {time.time() - t:.0f} s',
          flush=True)
  recs = []
  if 'cli' in names or ('orbax' in names and not (converted / 'model_config.json').is_file()):
    recs.append(run_cli(ckpt, converted, args.tiny))
    print(f"cli: {recs[-1]}", flush=True)
    if 'cli' not in names:
      recs.pop()
  for name in names:
    if name != 'cli':
      recs.append(run_scenario(name, ckpt, converted, work / f'cache_{name}', args.stage, args.tiny))
      print(f'{name}: {recs[-1]}', flush=True)
  print(table(recs))
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
