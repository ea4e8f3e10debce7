"""Shared access to a parity fixture set (`HV_PARITY_DIR`, default tests/fixtures/parity).

A set holds `config.json`, `fixtures.npz` and `syncdreamer_tiny.ckpt` recorded from the original PyTorch
code; sizes, timesteps, elevations and scales are read from the set, never assumed.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
PARITY_DIR = (ROOT / os.environ.get('HV_PARITY_DIR', 'tests/fixtures/parity')).resolve()
CKPT = PARITY_DIR / 'syncdreamer_tiny.ckpt'


def available() -> bool:
  return (PARITY_DIR / 'fixtures.npz').is_file() and (PARITY_DIR / 'config.json').is_file()


@functools.lru_cache(None)
def config_json() -> dict:
  with open(PARITY_DIR / 'config.json') as f:
    return json.load(f)


@functools.lru_cache(None)
def fixtures() -> dict:
  with np.load(PARITY_DIR / 'fixtures.npz') as f:
    return {k: f[k] for k in f.files}


def model_config():
  from hv_jax.models.config import ModelConfig
  return ModelConfig.from_dict(config_json()['tiny'])


@functools.lru_cache(None)
def converted_params():
  """The tiny checkpoint converted by the project's real converter (needs torch)."""
  from convert import syncdreamer
  params, _ = syncdreamer.convert(str(CKPT), model_config(), progress=False)
  return params


def nhwc(a):
  """NCHW / NCDHW fixture arrays -> channels-last."""
  a = np.asarray(a)
  return np.moveaxis(a, 1, -1)


def tolerance(ref, rel: float = 1e-4) -> float:
  """atol = rel * max(1, max|ref|): ~1e-5 of the output's scale for single forward keys (fixture README)."""
  return rel * max(1.0, float(np.max(np.abs(ref))))


def spread(name: str) -> float:
  """The original's own float32 rounding spread `observed_tolerances[name].max_abs` (max|f32 - f64| of a part
  re-run in float64 on the float32 run's inputs) of this set; 0 where the set does not record it."""
  return float(config_json().get('observed_tolerances', {}).get(name, {}).get('max_abs', 0.0))


def report(key: str, max_abs_err: float, atol: float, **extra) -> None:
  """Append {'key', 'max_abs_err', 'atol', ...} to $HV_PARITY_REPORT (a JSON-lines file), if set."""
  path = os.environ.get('HV_PARITY_REPORT')
  if path:
    rec = {'key': key, 'max_abs_err': float(max_abs_err), 'atol': float(atol), 'set': str(PARITY_DIR),
           'test': os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]}
    rec.update(extra)
    with open(path, 'a') as fh:
      fh.write(json.dumps(rec) + '\n')


def run_main(module: str, args):
  """A command's main(argv) in this process, reported as a subprocess would be (returncode, stdout, stderr): the
  command as `python -m module` runs it, without a new interpreter's start-up (~5-8 s of jax/torch imports), for
  mistakes a command refuses before any work. `--config=configs/...` is resolved against the repository root."""
  import contextlib
  import importlib
  import io
  import types
  args = [a.replace('--config=configs/', f'--config={ROOT}/configs/', 1) for a in args]
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = importlib.import_module(module).main(list(args))
  return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
