"""KL autoencoder API: posterior sampling from a key, mode, batch independence (fixture parity of every
VAE key is in test_model_parity.py)."""
import chex
import jax
import jax.numpy as jnp
import pytest

import parity as P
from hv_jax.models.vae import decode_first_stage, encode_first_stage

pytest.importorskip('torch', reason='uses the converted tiny checkpoint: pip install torch==2.13.0')
pytestmark = pytest.mark.skipif(not P.available(), reason=f'no parity fixtures in {P.PARITY_DIR}')


@pytest.fixture(scope='module')
def setup():
  return P.model_config().vae, P.converted_params()['vae'], jnp.asarray(P.fixtures()['input_image'])


def test_sample_from_key_equals_explicit_noise(setup):
  cfg, params, x = setup
  key = jax.random.key(1)
  z_key = encode_first_stage(params, x, cfg, key=key)
  z_ref = encode_first_stage(params, x, cfg, noise=jax.random.normal(key, z_key.shape))
  chex.assert_trees_all_close(z_key, z_ref, atol=0, rtol=0)
  with pytest.raises(ValueError):
    encode_first_stage(params, x, cfg)


def test_batch_items_independent(setup):
  """Items of a batch do not interact (GroupNorm/attention statistics are per item).

  Bound: the two batch shapes are two float32 computations of the same values, each about as far from the
  exact result as the original's own float32 run is from its float64 re-run (the set's spread), so they may
  differ by up to twice that, on top of the usual 1e-5 x scale (a batch of 2 in one set differs by 1.8e-5 at
  a decode scale of 3.7; the spread there is 5.5e-6). A real interaction between items is of order 1."""
  cfg, params, x = setup
  x2 = jnp.concatenate([x, -x], 0)
  z2 = encode_first_stage(params, x2, cfg, sample=False)
  z1 = encode_first_stage(params, x, cfg, sample=False)
  atol = P.tolerance(z1, 1e-5) + 2 * P.spread('vae_moments_f32_vs_f64')
  chex.assert_trees_all_close(z2[:x.shape[0]], z1, atol=atol, rtol=0)
  d2 = decode_first_stage(params, z2, cfg)
  chex.assert_shape(d2, x2.shape)
  d1 = decode_first_stage(params, z1, cfg)
  atol = P.tolerance(d1, 1e-5) + 2 * P.spread('vae_decode_f32_vs_f64')
  chex.assert_trees_all_close(d2[:x.shape[0]], d1, atol=atol, rtol=0)
