"""Compile time of jit(guided_eps) (the tiny model, batch 2) under XLA flag sets, and whether the output stays
bit-identical (docs/speed.md, "Compile flags"). Each flag set runs in a fresh process with the persistent
compilation cache off. `--model` takes another model: 'tiny' (the default) or a ModelConfig JSON, e.g. the
behaviour tests' tests/fixtures/small_model.json (docs/speed.md, "Test time").

  PYTHONPATH=. python benchmarks/compile_flags.py "" "--xla_llvm_disable_expensive_passes=true" ...
  PYTHONPATH=. python benchmarks/compile_flags.py --model tests/fixtures/small_model.json ""
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r'''
import hashlib, json, sys, time
import jax.numpy as jnp, numpy as np, jax
from hv_jax.models.config import ModelConfig
from hv_jax.models.init import random_params
from hv_jax.sampling.sampler import Condition, Sampler, SamplerConfig
cfg = ModelConfig.tiny() if sys.argv[1] == 'tiny' else ModelConfig.from_json(open(sys.argv[1]).read())
params = random_params(cfg, 2)
rng = np.random.default_rng(1)
x_t = jnp.asarray(rng.normal(size=(2, 16, 8, 8, 4)), jnp.float32)
cond = Condition(clip_embed=jnp.asarray(rng.normal(size=(2, 1, 768)), jnp.float32),
                 x_input=jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32),
                 v_embed=jnp.asarray(rng.normal(size=(2, 16, 4)), jnp.float32))
args = (params, x_t, jnp.asarray([501, 501]), cond, jnp.asarray([[2., 1.], [1., 0.5]]))
f = jax.jit(Sampler(cfg, SamplerConfig(steps=4)).guided_eps)
t0 = time.time(); lowered = f.lower(*args); t1 = time.time(); compiled = lowered.compile(); t2 = time.time()
out = np.asarray(compiled(*args))
print(json.dumps(dict(lower_s=t1 - t0, compile_s=t2 - t1, sha256=hashlib.sha256(out.tobytes()).hexdigest()[:16])))
'''


def main():
  args, model = sys.argv[1:], 'tiny'
  if args[:1] == ['--model']:
    if len(args) < 2:
      sys.exit('--model needs a value: tiny or a ModelConfig JSON file')
    model, args = os.path.abspath(args[1]) if args[1] != 'tiny' else 'tiny', args[2:]
  ref = None
  for flags in args or ['']:
    env = dict(os.environ, XLA_FLAGS=flags, PYTHONPATH=ROOT, JAX_ENABLE_COMPILATION_CACHE='false')
    r = subprocess.run([sys.executable, '-c', CHILD, model], env=env, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
      print(f'{flags or "(default)"}\tfailed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}')
      continue
    d = json.loads(r.stdout.strip().splitlines()[-1])
    ref = ref or d['sha256']
    same = 'reference' if d['sha256'] == ref and flags == (args or [''])[0] else (
        'bit-identical' if d['sha256'] == ref else 'differs')
    print(f'{flags or "(default)"}\tcompile {d["compile_s"]:.1f} s\tlower {d["lower_s"]:.1f} s\t{same}', flush=True)


if __name__ == '__main__':
  main()
