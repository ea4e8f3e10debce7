"""Session setup: one persistent XLA compilation cache for the whole test run, subprocesses included.

Most of the suite's time is XLA compiling the tiny models on CPU (the demo sampler alone is ~1 CPU-minute).
A program compiled again -- by another test's jit of the same function, or by a CLI subprocess on the same
device count -- is read back from this cache instead of being compiled twice. The folder lies in this run's
pytest temp dir (fresh per run, pruned by pytest like every tmp_path): nothing is shared with earlier runs,
and nothing is written outside it. The variables are exported, so `python -m hv_jax...` subprocesses
started by tests (which copy os.environ) use the same folder.
"""
from __future__ import annotations

import os

import pytest

# rembg imports pymatting, whose numba functions (alpha-matting post-processing, which hv_jax never calls) are
# compiled on the first import in a fresh environment: 82 s of a CI run, for nothing any test runs. No test runs
# numba code, so the suite turns numba's compiler off (before anything imports numba). A user's first
# `import rembg` still compiles once; numba caches it in the installed package.
os.environ.setdefault('NUMBA_DISABLE_JIT', '1')

CACHE_SETTINGS = {
    'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',     # every program, however quick to compile
    'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '-1',     # of any size
}


@pytest.hookimpl(trylast=True)      # after pytest's tmpdir plugin has made the run's temp dir
def pytest_configure(config):
  if os.environ.get('HV_TEST_JAX_CACHE') == '0':          # opt out (e.g. to time cold compiles)
    return
  factory = config._tmp_path_factory                       # the factory behind tmp_path_factory
  worker = os.environ.get('PYTEST_XDIST_WORKER')
  root = factory.getbasetemp()
  # xdist workers get basetemp/popen-gwN: share the run's folder above them
  path = (root.parent if worker else root) / 'jax_compilation_cache'
  path.mkdir(exist_ok=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = str(path)
  os.environ.update(CACHE_SETTINGS)
  import jax                                                 # may already be imported: set the live values too
  jax.config.update('jax_compilation_cache_dir', str(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
