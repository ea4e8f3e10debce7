"""Saving and restoring converted SyncDreamer params (orbax) with their model config.

Layout of a checkpoint directory:
  params/             orbax StandardCheckpointer tree of float32 arrays
  model_config.json   hv_jax.models.config.ModelConfig.to_dict() of its architecture() (no lowering: a
                      lowering changes no param)
  conversion.json     provenance written by the converter (source hashes, unused keys)
"""
from __future__ import annotations

import json
import os
from typing import Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from hv_jax.models.config import ModelConfig
from hv_jax.models.init import abstract_params


class CheckpointError(Exception):
  """A missing, incomplete or mismatched checkpoint directory (user-facing, one line)."""


def save(directory: str, params, config: ModelConfig, meta: Optional[dict] = None) -> None:
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(directory, 'params'), jax.tree.map(np.asarray, params))
  ckptr.wait_until_finished()
  with open(os.path.join(directory, 'model_config.json'), 'w') as f:
    f.write(config.architecture().to_json())
  with open(os.path.join(directory, 'conversion.json'), 'w') as f:
    json.dump(meta or {}, f, indent=1)


def load_config(directory: str) -> ModelConfig:
  path = os.path.join(directory, 'model_config.json')
  if not os.path.isfile(path):
    raise CheckpointError(f'{directory} is not an hv_jax checkpoint (no model_config.json); convert the PyTorch '
                          'weights with: python -m convert.syncdreamer --config.ckpt=... --config.out=DIR')
  with open(path) as f:
    return ModelConfig.from_json(f.read())


def load(directory: str, *, config: Optional[ModelConfig] = None,
         sharding: Optional[Callable[[tuple], jax.sharding.Sharding] | jax.sharding.Sharding] = None):
  """Restores (params, config). `sharding`: one Sharding for every leaf, or a function path -> Sharding.

  If `config` is given its architecture must equal the stored one (a mismatched config is an error, not a
  reshape), and it is the config returned (with its lowering).
  """
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise CheckpointError(f'checkpoint directory not found: {directory}')
  stored = load_config(directory)
  if config is not None:
    if config.architecture() != stored.architecture():
      raise CheckpointError(f'the model config does not match the checkpoint in {directory}')
    stored = config
  abstract = traverse_util.flatten_dict(abstract_params(stored))
  def target(path, leaf):
    s = sharding(path) if callable(sharding) else sharding
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s)
  tree = traverse_util.unflatten_dict({p: target(p, l) for p, l in abstract.items()})
  try:
    params = ocp.StandardCheckpointer().restore(os.path.join(directory, 'params'), tree)
  except Exception as e:  # noqa: BLE001  (orbax raises several kinds)
    raise CheckpointError(f'cannot restore params from {directory}: {str(e).splitlines()[0] if str(e) else e}') from e
  return params, stored
