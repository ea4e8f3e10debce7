"""Parity of hv_jax.models.vae against the PyTorch AutoencoderKL fixtures (tiny config, float32)."""
import json
import os
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hv_jax.models.config import ModelConfig
from hv_jax.models.vae import AutoencoderKL, decode_first_stage, encode_first_stage, posterior

_ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE_DIR = _ROOT / os.environ.get('HV_PARITY_DIR', 'tests/fixtures/parity')
PREFIX = 'first_stage_model.'

pytestmark = pytest.mark.skipif(not (FIXTURE_DIR / 'fixtures.npz').exists(),
                                reason=f'no parity fixtures in {FIXTURE_DIR}')


def _torch_vae_to_flax(state_dict, prefix):
  """`prefix`-stripped torch keys -> nested Flax params (numeric segments merged, OIHW -> HWIO)."""
  tree = {}
  for key, value in state_dict.items():
    if not key.startswith(prefix):
      continue
    parts = []
    for seg in key[len(prefix):].split('.'):
      if seg.isdigit():
        parts[-1] = f'{parts[-1]}_{seg}'
      else:
        parts.append(seg)
    arr = value.detach().cpu().numpy()
    if parts[-1] == 'weight':
      parts[-1] = 'kernel' if arr.ndim == 4 else 'scale'
      if arr.ndim == 4:
        arr = arr.transpose(2, 3, 1, 0)
    node = tree
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = jnp.asarray(arr)
  return tree


def _nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


def _close(actual, ref, name):
  ref = np.asarray(ref)
  atol = 1e-4 * max(1.0, float(np.abs(ref).max()))
  err = float(np.abs(np.asarray(actual) - ref).max())
  print(f'{name}: max abs err {err:.3e} (atol {atol:.1e})')
  chex.assert_trees_all_close(np.asarray(actual), ref, atol=atol, rtol=1e-4)


@pytest.fixture(scope='module')
def setup():
  torch = pytest.importorskip('torch')
  cfg = ModelConfig.from_dict(json.loads((FIXTURE_DIR / 'config.json').read_text())['tiny']).vae
  sd = torch.load(FIXTURE_DIR / 'syncdreamer_tiny.ckpt', map_location='cpu', weights_only=True)['state_dict']
  params = _torch_vae_to_flax(sd, PREFIX)
  fx = dict(np.load(FIXTURE_DIR / 'fixtures.npz'))
  return cfg, params, fx


def test_param_tree_matches_checkpoint(setup):
  cfg, params, fx = setup
  x = jnp.asarray(fx['input_image'])
  init = jax.eval_shape(lambda: AutoencoderKL(cfg).init(jax.random.PRNGKey(0), x)['params'])
  chex.assert_trees_all_equal_shapes_and_dtypes(init, params)


def test_encode_moments_and_posterior(setup):
  cfg, params, fx = setup
  moments = jax.jit(lambda p, x: AutoencoderKL(cfg).apply({'params': p}, x, method=AutoencoderKL.encode))(
      params, jnp.asarray(fx['input_image']))
  _close(moments, _nhwc(fx['vae_moments']), 'vae_moments')
  mean, logvar, std = posterior(moments)
  _close(mean, _nhwc(fx['vae_mean']), 'vae_mean')
  _close(logvar, _nhwc(fx['vae_logvar']), 'vae_logvar')
  _close(std, _nhwc(fx['vae_std']), 'vae_std')


def test_encode_first_stage(setup):
  cfg, params, fx = setup
  x = jnp.asarray(fx['input_image'])
  noise = jnp.asarray(_nhwc(fx['vae_sample_noise']))
  _close(encode_first_stage(params, x, cfg, noise=noise), _nhwc(fx['x_input']), 'x_input')
  _close(encode_first_stage(params, x, cfg, sample=False), _nhwc(fx['vae_mode_latent']), 'vae_mode_latent')
  # key path == explicit noise drawn with jax.random.normal(key, mean.shape)
  key = jax.random.PRNGKey(1)
  z_key = encode_first_stage(params, x, cfg, key=key)
  z_ref = encode_first_stage(params, x, cfg, noise=jax.random.normal(key, z_key.shape))
  chex.assert_trees_all_close(z_key, z_ref, atol=0, rtol=0)
  with pytest.raises(ValueError):
    encode_first_stage(params, x, cfg)


def test_decode_first_stage(setup):
  cfg, params, fx = setup
  out = decode_first_stage(params, jnp.asarray(_nhwc(fx['vae_decode_in'])), cfg)
  _close(out, _nhwc(fx['vae_decode_out']), 'vae_decode_out')


def test_batch_items_independent(setup):
  """Items of a batch do not interact (GroupNorm/attention statistics are per item)."""
  cfg, params, fx = setup
  x = jnp.asarray(fx['input_image'])
  x2 = jnp.concatenate([x, -x], 0)
  z2 = encode_first_stage(params, x2, cfg, sample=False)
  z1 = encode_first_stage(params, x, cfg, sample=False)
  chex.assert_trees_all_close(z2[:x.shape[0]], z1, atol=1e-5, rtol=1e-5)
  d2 = decode_first_stage(params, z2, cfg)
  chex.assert_shape(d2, x2.shape)
  chex.assert_trees_all_close(d2[:x.shape[0]], decode_first_stage(params, z1, cfg), atol=1e-5, rtol=1e-5)
