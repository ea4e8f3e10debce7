"""Building the SyncDreamer param tree: abstract shapes (no allocation) or random weights (demo / tests)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hv_jax.models.config import ModelConfig
from hv_jax.models.syncdreamer import SyncDreamer


def _dummy_inputs(config: ModelConfig):
  s, h = config.image_size, config.latent_size
  return (jnp.zeros((1, s, s, 3), jnp.float32), jnp.zeros((1, config.view_num, h, h, 4), jnp.float32),
          jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.float32))


def abstract_params(config: ModelConfig):
  """Nested dict of jax.ShapeDtypeStruct: the exact param tree of `SyncDreamer(config)`."""
  model = SyncDreamer(config)
  return jax.eval_shape(lambda k: model.init(k, *_dummy_inputs(config)), jax.random.key(0))['params']


def random_params(config: ModelConfig, seed: int = 0):
  """Randomly initialised params (Flax default initialisers; cameras are the real ones)."""
  model = SyncDreamer(config)
  return jax.jit(lambda k: model.init(k, *_dummy_inputs(config)))(jax.random.key(seed))['params']
