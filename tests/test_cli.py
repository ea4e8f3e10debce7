"""Config-file CLIs: a mistake in the flags or the config file is one `error:` line and exit code 2."""
import dataclasses
import os
import subprocess
import sys

import pytest

import parity as P

CLIS = {   # module, its config, a float field of that config, a misspelt field and the field meant
    'sample': ('hv_jax.sample', 'configs/demo.py', 'eta', 'sample_nm', 'sample_num'),
    'diversity': ('experiments.diversity', 'experiments/configs/demo_sweep.py', 'eta', 'sweep.none_', 'none'),
    'reconstruct': ('hv_jax.reconstruct', 'configs/neus_fast.py', 'train.base_lr', 'mesh_resolutoin',
                    'mesh_resolution'),
}


def _run(module, *args, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(P.ROOT), JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True, cwd=P.ROOT, env=env,
                     timeout=300)
  errors = [l for l in r.stderr.splitlines() if l.startswith('error: ')]
  assert 'Traceback' not in r.stderr, r.stderr[-2000:]
  return r.returncode, errors


def _errors(r):
  """(returncode, the stderr lines that start with 'error: ') of a run."""
  return r.returncode, [l for l in r.stderr.splitlines() if l.startswith('error: ')]


@pytest.mark.parametrize('cli', sorted(CLIS))
def test_config_mistakes_are_one_line(cli, tmp_path):
  module, config, float_field, typo, meant = CLIS[cli]
  config = str(P.ROOT / config)
  out = f'--config.output_dir={tmp_path / "out"}'
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config():\n  raise ValueError("no such sweep")\n')
  cases = [
      ([f'--config={tmp_path / "missing.py"}', out], f'error: config file {tmp_path / "missing.py"} not found'),
      ([f'--config={broken}', out], f'error: cannot load config file {broken}: ValueError: no such sweep'),
      ([f'--config={config}', f'--config.{typo}=3', out],
       f"error: --config.{typo}: the config has no field '{typo.split('.')[-1]}'; did you mean "
       f"--config.{typo.rpartition('.')[0] + '.' if '.' in typo else ''}{meant}?"),
      ([f'--config={config}', f'--config.{float_field}=abc', out], f'error: flag --config.{float_field}=abc'),
      # a name close to no field: the flag and the name, not ml_collections' nested KeyError text
      ([f'--config={config}', '--config.qqqq=3', out], "error: --config.qqqq: the config has no field 'qqqq' ("),
      ([f'--config={config}', f'--config.{float_field}.qqqq=3', out],
       f"error: --config.{float_field}.qqqq: --config.{float_field} is a float, not a block: it has no field 'qqqq'"),
      ([f'--config={config}', f'--config.{float_field}=nan', out], f'error: --config.{float_field}=nan: must be a finite'),
      ([out], 'error: pass --config='),
  ]
  # the misspelt field through `python -m` (the command as typed: exit code, stderr, no traceback); the other
  # mistakes through the same main(argv) in this process
  for k, (args, want) in enumerate(cases):
    code, errors = _run(module, *args, tmp_path=tmp_path) if k == 2 else _errors(P.run_main(module, args))
    assert code == 2 and len(errors) == 1 and errors[0].startswith(want), (args, errors)
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('module,args', [
    ('hv_jax.evaluate', ['--pred', 'x']),                   # the old spelling: an unknown flag
    ('hv_jax.evaluate_mesh', ['--config.gt']),              # no value
    ('experiments.report', ['--config.result=x']),          # no such field
    ('convert.syncdreamer', ['--config.ckpt=a', 'b']),      # a stray argument
    ('convert.lpips', ['--unknown']),
    ('hv_jax.matte', ['--config.metod=plain']),           # no such field
    ('hv_jax.matte', ['--config.method.x=plain']),        # a field under a string
    ('hv_jax.sample', [f'--config={P.ROOT / "configs" / "demo.py"}', '--config.eta=abc']),   # not a number
])
def test_flag_mistakes_of_the_other_clis_are_one_line(module, args, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(P.ROOT), JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                     timeout=300)
  assert r.returncode == 2 and r.stdout == '' and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert r.stderr.startswith('error: ') and f'python -m {module} --help for usage' in r.stderr


@dataclasses.dataclass(frozen=True)
class _Sizes:
  side: int = 1


@pytest.mark.parametrize('kind', ['numpy', 'xla'])
def test_out_of_memory_is_one_line(kind, capsys):
  """A size the settings ask for that does not fit (a mesh_resolution, a batch): one line naming it, exit 2."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from hv_jax import cli, settings

  def body(s):
    if kind == 'numpy':
      np.empty((s.side,) * 3, np.float32)
    else:
      jax.block_until_ready(jnp.zeros((s.side, s.side), jnp.float32))
    return 0

  side = 10 ** 6 if kind == 'numpy' else 2 ** 22       # 3.6 EiB; 64 TiB
  rc = cli.main([f'--config.side={side}'], _Sizes, body, prog='python -m x',
                default=lambda: settings.config_dict(_Sizes))
  err = capsys.readouterr().err
  want = 'error: out of memory: Unable to allocate' if kind == 'numpy' else \
      'error: out of device memory: RESOURCE_EXHAUSTED: Out of memory allocating'
  assert rc == 2 and err.startswith(want) and err.count('\n') == 1, err
