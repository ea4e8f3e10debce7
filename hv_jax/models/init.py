"""Building the SyncDreamer param tree: abstract shapes (no allocation) or random weights (demo / tests)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hv_jax.models import cameras
from hv_jax.models.config import ModelConfig
from hv_jax.models.syncdreamer import SyncDreamer


def _dummy_inputs(config: ModelConfig):
  s, h = config.image_size, config.latent_size
  return (jnp.zeros((1, s, s, 3), jnp.float32), jnp.zeros((1, config.view_num, h, h, 4), jnp.float32),
          jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.float32))


def abstract_params(config: ModelConfig):
  """Nested dict of jax.ShapeDtypeStruct: the exact param tree of `SyncDreamer(config)` (a new dict each call)."""
  return traverse_util.unflatten_dict(dict(_abstract_leaves(config)))


@functools.lru_cache(maxsize=8)
def _abstract_leaves(config: ModelConfig):
  """Tracing `init` takes seconds (tiny) to ~10 s (full) on CPU: once per config (every field, the lowering too)."""
  model = SyncDreamer(config)
  tree = jax.eval_shape(lambda k: model.init(k, *_dummy_inputs(config)), jax.random.key(0))['params']
  return tuple(traverse_util.flatten_dict(tree).items())


def random_params(config: ModelConfig, seed: int = 0):
  """Random params without running the model (compiling `init` of the whole network takes minutes on CPU).

  Kernels ~ N(0, 1/fan_in), norm scales 1, biases 0, CLIP embeddings N(0, 0.02); the cameras are the real
  ones. For demos and benchmarks only: these are not trained weights.
  """
  rng = np.random.default_rng(seed)
  K, poses, az = cameras.default_cameras(config.view_num, config.image_size)
  fixed = {('Ks',): K, ('poses',): poses, ('azimuth',): az}
  out = {}
  for path, leaf in traverse_util.flatten_dict(abstract_params(config)).items():
    name, shape = path[-1], leaf.shape
    if path in fixed:
      value = fixed[path]
    elif name == 'scale':
      value = np.ones(shape, np.float32)
    elif name == 'bias':
      value = np.zeros(shape, np.float32)
    elif name == 'kernel':
      fan_in = int(np.prod(shape[:-1]))
      value = rng.normal(0., 1. / np.sqrt(fan_in), shape).astype(np.float32)
    else:                                           # class/positional embeddings, CLIP projection
      value = rng.normal(0., 0.02, shape).astype(np.float32)
    out[path] = jnp.asarray(value)
  return traverse_util.unflatten_dict(out)
