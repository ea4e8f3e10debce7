"""Peak memory and time of converting a FULL-SIZE SyncDreamer checkpoint (synthetic weights, real key layout).

  python benchmarks/convert_memory.py [--workdir /tmp/hv_convert_bench] [--keep]

Builds a ~5.6 GB checkpoint with every key, shape and dtype of the real one (tests/fixtures/full_keys.json;
random values), saved as {'state_dict': ...} like the Lightning checkpoint, then runs the real converter CLI in
a child process and reports its wall time and peak resident memory (ru_maxrss of the child). Needs torch and
~12 GB of free disk.
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
  torch.save({'state_dict': sd, 'global_step': 0}, path)
  n = sum(t.numel() for t in sd.values())
  del sd
  return n


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--workdir', default='/tmp/hv_convert_bench')
  p.add_argument('--keep', action='store_true', help='keep the synthetic checkpoint and the output')
  args = p.parse_args()
  work = pathlib.Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  ckpt, out = work / 'syncdreamer_full_synthetic.ckpt', work / 'converted'
  if not ckpt.exists():
    t = time.time()
    n = build_checkpoint(ckpt)
    print(f'built {ckpt} ({n / 1e9:.2f}e9 elements, {ckpt.stat().st_size / 2**30:.2f} GiB) in {time.time() - t:.0f} s')
  shutil.rmtree(out, ignore_errors=True)
  t = time.time()
  r = subprocess.run([sys.executable, '-m', 'convert.syncdreamer', '--ckpt', str(ckpt), '--out', str(out), '--quiet'],
                     cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
  wall = time.time() - t
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20   # KiB -> GiB
  size = sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 2**30 if out.exists() else 0
  print(f'| converter exit | wall s | peak RSS GiB | output GiB |\n|---|---|---|---|\n'
        f'| {r.returncode} | {wall:.0f} | {peak:.2f} | {size:.2f} |')
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)
  return r.returncode


if __name__ == '__main__':
  sys.exit(main())
