"""The package edges: the hv_jax library never imports the checkout's convert/, experiments/ or configs/; its
module-level imports form no cycle; `pip install` installs hv_jax only; converted weights load without torch.

Static checks (AST, setup.cfg) plus two short subprocesses: seconds, no model compiled.
"""
from __future__ import annotations

import ast
import configparser
import os
import pathlib
import subprocess
import sys

import pytest
import setuptools

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'hv_jax'
CHECKOUT_ONLY = ('convert', 'experiments', 'configs', 'tools', 'benchmarks')   # used from the checkout


def _modules():
  """{module name: (parsed tree, the package its relative imports start from)} of every .py of hv_jax."""
  out = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    if parts[-1] == '__init__':
      parts = parts[:-1]
    package = '.'.join(parts if path.name == '__init__.py' else parts[:-1])
    out['.'.join(parts)] = (ast.parse(path.read_text(), str(path)), package)
  return out


def _is_entry(tree: ast.Module) -> bool:
  """A command (`python -m hv_jax.<name>`): it has an `if __name__ == '__main__':` block."""
  return any(isinstance(n, ast.If) and "__name__ == '__main__'" in ast.unparse(n.test) for n in tree.body)


def _imports(nodes, package: str):
  """(line, imported module name) of the Import/ImportFrom nodes among `nodes` (relative imports resolved)."""
  for node in nodes:
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
        base = '.'.join(anchor + ([base] if base else []))
      yield node.lineno, base
      for alias in node.names:       # `from hv_jax.x import y`: y may be the module hv_jax.x.y
        yield node.lineno, f'{base}.{alias.name}'
    elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith('import_module') and node.args and \
        isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
      yield node.lineno, node.args[0].value


def _top_level(tree: ast.Module):
  """The statements run at import time: the module body and the bodies of its if/try blocks (not functions
  or classes' methods)."""
  todo = list(tree.body)
  while todo:
    node = todo.pop()
    yield node
    if isinstance(node, (ast.If, ast.Try, ast.With)):
      for field in ('body', 'orelse', 'finalbody', 'handlers'):
        todo.extend(getattr(node, field, []) or [])
    elif isinstance(node, ast.ExceptHandler):
      todo.extend(node.body)
    elif isinstance(node, ast.ClassDef):
      todo.extend(n for n in node.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def test_the_library_never_imports_the_checkouts_folders():
  """No hv_jax library module imports convert/experiments/configs (inside functions included); the commands
  may, but only inside a function (hv_jax installed without the checkout still runs them)."""
  bad = []
  for name, (tree, package) in _modules().items():
    entry = _is_entry(tree)
    nodes = _top_level(tree) if entry else ast.walk(tree)
    for line, imported in _imports(nodes, package):
      if imported.split('.')[0] in CHECKOUT_ONLY:
        bad.append(f'{name}:{line} imports {imported}' + (' at module level' if entry else ''))
  assert not bad, '\n'.join(bad)


def test_module_level_imports_of_hv_jax_have_no_cycle():
  modules = _modules()
  graph = {}
  for name, (tree, package) in modules.items():
    deps = set()
    for _, imported in _imports(_top_level(tree), package):
      while imported and imported not in modules:     # `from pkg import name` of a non-module name
        imported = imported.rpartition('.')[0]
      parts = imported.split('.')
      deps.update('.'.join(parts[:i]) for i in range(1, len(parts) + 1))   # importing a.b.c runs a, a.b too
    graph[name] = sorted(d for d in deps if d in modules and d != name and d != 'hv_jax')
  state, path = {}, []

  def visit(node):
    state[node] = 'open'
    path.append(node)
    for dep in graph[node]:
      if state.get(dep) == 'open':
        cycle = path[path.index(dep):] + [dep]
        pytest.fail('import cycle: ' + ' -> '.join(cycle))
      if dep not in state:
        visit(dep)
    path.pop()
    state[node] = 'done'

  for node in graph:
    if node not in state:
      visit(node)
  assert 'hv_jax.sampling.pipeline' in graph and 'hv_jax.models.config' in graph['hv_jax.sampling.pipeline']


def test_only_hv_jax_is_installed():
  """setup.cfg's package list, as setuptools finds it (what `pip install -e .` exposes): hv_jax only."""
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / 'setup.cfg')
  options = cfg['options']
  assert options.get('packages', '').strip() == 'find:' and 'py_modules' not in options
  split = lambda key: [x.strip() for x in cfg['options.packages.find'].get(key, '').split() if x.strip()]
  found = setuptools.find_packages(where=str(ROOT), include=split('include') or ('*',), exclude=split('exclude'))
  assert {p.split('.')[0] for p in found} == {'hv_jax'}, found
  assert {'hv_jax', 'hv_jax.models', 'hv_jax.sampling', 'hv_jax.neus', 'hv_jax.metrics'} <= set(found)
  assert not any(n in options.get('package_dir', '') for n in CHECKOUT_ONLY)


def _run(code: str, cwd) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_converted_weights_load_without_torch_or_convert(tmp_path):
  """An orbax checkpoint (hv_jax.checkpoint) and LPIPS .npz params (hv_jax.metrics.lpips) load in a process
  that never imports torch nor any module of convert/."""
  code = f'''
import functools, sys, jax, numpy as np
from hv_jax import checkpoint
from hv_jax.metrics import lpips
from hv_jax.models.config import ModelConfig
config = ModelConfig.tiny()
checkpoint.abstract_params = functools.lru_cache(None)(checkpoint.abstract_params)   # trace the model once
rng = np.random.default_rng(0)
params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), checkpoint.abstract_params(config))
checkpoint.save({str(tmp_path / 'ckpt')!r}, params, config, {{}})
loaded, stored = checkpoint.load({str(tmp_path / 'ckpt')!r})
assert stored.architecture() == config.architecture()
assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)))
lpips.save_npz(lpips.random_params(0), {str(tmp_path / 'lpips.npz')!r})
lpips.load_npz({str(tmp_path / 'lpips.npz')!r})
loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'convert')))
assert not loaded, loaded
print('ok')
'''
  r = _run(code, tmp_path)
  assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-3000:]


def test_without_the_checkout_a_command_that_must_convert_says_so_in_one_line(tmp_path):
  """hv_jax installed without the checkout (convert not importable): the sampler's first-use conversion of
  a .ckpt is one UserError line; a library call without a converter says how to convert."""
  code = f'''
import pathlib, sys
sys.modules['convert'] = None            # as if hv_jax were installed without the checkout
from hv_jax.errors import UserError
from hv_jax import evaluate, sample
from hv_jax.sampling import pipeline
for call in (lambda: sample.convert_ckpt('m.ckpt', 'out', None), evaluate.converters,
             lambda: pipeline.convert_cached(pathlib.Path({str(tmp_path / 'm.ckpt')!r}), None, None)):
  try:
    call()
  except UserError as e:
    print(str(e))
'''
  (tmp_path / 'm.ckpt').write_bytes(b'x')
  r = _run(code, tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 3, r.stdout
  assert lines[0].startswith('converting m.ckpt on first use needs convert/ of the hv_jax repository checkout')
  assert lines[1].startswith('reading original (PyTorch) metric weights needs convert/')
  assert 'python -m convert.syncdreamer --config.ckpt=' in lines[2] and not (tmp_path / 'm.ckpt.hv_jax').exists()
