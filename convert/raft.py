"""Convert a princeton-vl RAFT (large) state dict, e.g. raft-things.pth, to hv_jax.metrics.raft params.

  params = convert.raft.load('RAFT/weights/raft-things.pth')

The checkpoint of eval_consistency.py is `torch.nn.DataParallel(RAFT(args)).state_dict()`: 179 keys (all under
`module.`; keys without the prefix are accepted too), 5,261,329 elements. They are accounted for as:
- 154 tensors -> the 154 leaves of the Flax tree (124 conv / norm parameters, 5,257,536 elements, plus the
  15 cnet BatchNorms' running_mean / running_var). Conv weights OIHW -> HWIO here, once.
- 8 aliases `cnet.layer{2,3}.0.downsample.1.{weight,bias,running_mean,running_var}`: torch registers norm3 also as
  downsample[1], so the state dict holds it twice; both copies must be present and equal.
- 17 `num_batches_tracked` counters (15 BatchNorms + 2 aliases): training-only, allow-listed by name, optional.
Missing, unexpected, mis-shaped, duplicated (with and without `module.`) or disagreeing keys are listed by name in
one ConversionError; nothing is dropped silently.
"""
from __future__ import annotations

import re
import zlib
from typing import Dict, Mapping, Tuple

import numpy as np
from flax import traverse_util

from convert.torch_io import ConversionError, load_state_dict, to_numpy
from hv_jax.metrics import raft

PREFIX = 'module.'
_LEAF_TO_TORCH = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                  'var': 'running_var'}
_ALIAS = re.compile(r'^(cnet\.layer\d\.0\.)downsample\.1\.(.+)$')     # -> \1norm3.\2


def torch_key(path: Tuple[str, ...]) -> str:
  """('cnet', 'layer2_0', 'downsample_0', 'kernel') -> 'cnet.layer2.0.downsample.0.weight'."""
  parts = [re.sub(r'^(.*)_(\d+)$', r'\1.\2', p) for p in path[:-1]]
  return '.'.join(parts + [_LEAF_TO_TORCH[path[-1]]])


def torch_shape(path: Tuple[str, ...], shape: tuple) -> tuple:
  return (shape[3], shape[2], shape[0], shape[1]) if path[-1] == 'kernel' else tuple(shape)


def torch_layout() -> Dict[str, tuple]:
  """{key (no `module.`): shape} of RAFT(small=False).state_dict(), derived from the Flax tree."""
  layout = {}
  for path, shape in raft.param_shapes():
    key = torch_key(path)
    layout[key] = torch_shape(path, shape)
    if path[-1] == 'mean':   # one per BatchNorm
      layout[key[:-len('running_mean')] + 'num_batches_tracked'] = ()
  for key in list(layout):
    m = re.match(r'^(cnet\.layer\d\.0\.)norm3\.(.+)$', key)
    if m:
      layout[f'{m.group(1)}downsample.1.{m.group(2)}'] = layout[key]
  return layout




def convert_state_dict(state_dict: Mapping[str, object]) -> dict:
  """Original-layout state dict (torch tensors or numpy arrays) -> nested params dict of float32 numpy arrays."""
  sd, problems = {}, []
  for k, v in state_dict.items():
    name = k[len(PREFIX):] if k.startswith(PREFIX) else k
    if name in sd:
      problems.append(f'  duplicate key (with and without {PREFIX!r}): {k}')
    sd[name] = (k, v)
  layout = torch_layout()
  for name in sorted(set(sd) - set(layout)):
    problems.append(f'  unexpected key: {sd[name][0]}')
  for name in sorted(set(layout) - set(sd)):
    if not name.endswith('num_batches_tracked'):
      problems.append(f'  missing key: {PREFIX}{name} {layout[name]}')
  for name in sorted(set(layout) & set(sd)):
    got = tuple(sd[name][1].shape)
    if got != layout[name]:
      problems.append(f'  mis-shaped key: {sd[name][0]}: checkpoint gives {got}, RAFT expects {layout[name]}')
  for name in sorted(set(layout) & set(sd)):
    m = _ALIAS.match(name)
    if m and not name.endswith('num_batches_tracked'):
      orig = f'{m.group(1)}norm3.{m.group(2)}'
      if orig in sd and tuple(sd[orig][1].shape) == tuple(sd[name][1].shape):
        if not np.array_equal(to_numpy(sd[name][1]), to_numpy(sd[orig][1])):
          problems.append(f'  aliased keys disagree (torch stores norm3 twice): {sd[name][0]} != {sd[orig][0]}')
  if problems:
    raise ConversionError(f'RAFT state dict does not match RAFT(small=False) ({len(problems)} problems):\n'
                          + '\n'.join(problems))
  flat = {}
  for path, _ in raft.param_shapes():
    arr = to_numpy(sd[torch_key(path)][1]).astype(np.float32)
    flat[path] = np.ascontiguousarray(arr.transpose(2, 3, 1, 0) if path[-1] == 'kernel' else arr)
  return traverse_util.unflatten_dict(flat)


def load(path: str) -> dict:
  """Params from a RAFT .pth (e.g. raft-things.pth); ConversionError if missing, unreadable or mismatched."""
  return convert_state_dict(load_state_dict(path, what='RAFT checkpoint'))


# ----------------------------------------------------------------------------- random weights for fixtures

def canonical_key(key: str) -> str:
  """Key without `module.`, with the downsample.1 alias folded onto norm3 (one tensor, one seed)."""
  key = key[len(PREFIX):] if key.startswith(PREFIX) else key
  return _ALIAS.sub(r'\1norm3.\2', key)


# Output scale of the layers whose statistics matter with random weights: gain / sqrt(fan_in) elsewhere.
_GAINS = (('update_block.flow_head.conv2.', 0.15), ('update_block.gru.', 1.0), ('update_block.mask.2.', 1.0),
          ('update_block.encoder.conv.', 1.0), ('fnet.conv2.', 1.0), ('cnet.conv2.', 1.0))


def random_state_dict(seed: int = 0, layout: Mapping[str, tuple] | None = None) -> Dict[str, np.ndarray]:
  """Deterministic random weights in the original layout (no `module.`), one numpy generator per key.

  Seeded by (seed, crc32(canonical_key)), so aliases get the same values and the result does not depend on
  key order. Conv weights ~ N(0, gain^2 / fan_in) (gain sqrt(2) before relu), biases ~ N(0, 0.1^2), BatchNorm
  weight ~ U(0.5, 1.5), bias ~ N(0, 0.1^2), running_mean ~ N(0, 0.2^2), running_var ~ U(0.5, 2).
  """
  layout = torch_layout() if layout is None else layout
  out = {}
  for key, shape in layout.items():
    name = canonical_key(key)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    leaf = name.rsplit('.', 1)[1]
    if leaf == 'num_batches_tracked':
      out[key] = np.array(0, np.int64)
      continue
    is_bn = '.norm' in name
    if leaf == 'weight' and len(shape) == 4:
      gain = next((g for s, g in _GAINS if s in name), np.sqrt(2.0))
      v = rng.standard_normal(shape) * gain / np.sqrt(np.prod(shape[1:]))
    elif leaf == 'weight' and is_bn:
      v = rng.uniform(0.5, 1.5, shape)
    elif leaf == 'running_mean':
      v = rng.standard_normal(shape) * 0.2
    elif leaf == 'running_var':
      v = rng.uniform(0.5, 2.0, shape)
    elif leaf == 'bias':
      v = rng.standard_normal(shape) * 0.1
    else:
      raise ValueError(f'random_state_dict: no rule for {key}')
    out[key] = v.astype(np.float32)
  return out


def random_params(seed: int = 0) -> dict:
  """hv_jax params of `random_state_dict(seed)` (benchmarks, random_weights=True): the fixtures' random RAFT."""
  return convert_state_dict(random_state_dict(seed))
