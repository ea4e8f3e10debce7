"""NeuSRenderer state_dict (PyTorch) <-> NeuS param tree (hv_jax.neus.fields).

  params = convert.neus.load('ckpt/last.ckpt')                  # a RendererTrainer checkpoint (train_renderer.py)

Explicit key mapping, every key accounted for:

  {prefix}sdf_network.lin{l}.weight_g  [out, 1]   -> ['sdf'][f'lin{l}']['g']      [out]
  {prefix}sdf_network.lin{l}.weight_v  [out, in]  -> ['sdf'][f'lin{l}']['v']      [in, out]  (transposed)
  {prefix}sdf_network.lin{l}.weight    [out, in]  -> ['sdf'][f'lin{l}']['kernel'] [in, out]  (no weight norm)
  {prefix}sdf_network.lin{l}.bias      [out]      -> ['sdf'][f'lin{l}']['bias']   [out]
  {prefix}color_network.lin{l}.*                  -> ['color'][f'lin{l}'][...]   (same rules)
  {prefix}deviation_network.variance   []         -> ['variance']                 []

`prefix` is 'renderer.' for RendererTrainer checkpoints (train_renderer.py) and '' for a bare
NeuSRenderer.state_dict(). Unknown, missing and mis-shaped keys raise `ConversionError` naming them.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from convert.torch_io import ConversionError, load_state_dict, to_numpy
from hv_jax.neus.fields import NeuSConfig, Params

Layout = str  # 'g' | 'T' | 'id'


def key_map(cfg: NeuSConfig, prefix: str = 'renderer.') -> Dict[str, Tuple[Tuple[str, ...], Layout, tuple]]:
  """torch key -> (param path, layout, torch shape) for the model `cfg` describes."""
  m = {}
  for net, sub, c in (('sdf_network', 'sdf', cfg.sdf), ('color_network', 'color', cfg.color)):
    for l, (fi, fo) in enumerate(c.layer_shapes()):
      base = f'{prefix}{net}.lin{l}.'
      if c.weight_norm:
        m[base + 'weight_g'] = ((sub, f'lin{l}', 'g'), 'g', (fo, 1))
        m[base + 'weight_v'] = ((sub, f'lin{l}', 'v'), 'T', (fo, fi))
      else:
        m[base + 'weight'] = ((sub, f'lin{l}', 'kernel'), 'T', (fo, fi))
      m[base + 'bias'] = ((sub, f'lin{l}', 'bias'), 'id', (fo,))
  m[f'{prefix}deviation_network.variance'] = (('variance',), 'id', ())
  return m


def convert_state_dict(state_dict: Mapping[str, Any], cfg: NeuSConfig = NeuSConfig(),
                       prefix: str = 'renderer.') -> Params:
  """torch state_dict -> param tree (numpy float32 leaves). Raises on any unknown/missing/mis-shaped key."""
  m = key_map(cfg, prefix)
  unknown = sorted(k for k in state_dict if k not in m)
  missing = sorted(k for k in m if k not in state_dict)
  misshaped: List[str] = []
  params: Params = {}
  for k, (path, layout, shape) in m.items():
    if k not in state_dict:
      continue
    a = to_numpy(state_dict[k])
    if tuple(a.shape) != shape:
      misshaped.append(f'{k}: {tuple(a.shape)} (expected {shape})')
      continue
    a = a.astype(np.float32)
    if layout == 'g':
      a = a[:, 0]
    elif layout == 'T':
      a = np.ascontiguousarray(a.T)
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = a
  if unknown or missing or misshaped:
    lines = ['NeuS state_dict does not match the model config:']
    lines += [f'  unexpected key: {k}' for k in unknown]
    lines += [f'  missing key: {k}' for k in missing]
    lines += [f'  mis-shaped key: {k}' for k in misshaped]
    raise ConversionError('\n'.join(lines))
  return params


def to_state_dict(params: Params, cfg: NeuSConfig = NeuSConfig(), prefix: str = 'renderer.') -> Dict[str, np.ndarray]:
  """Inverse of `convert_state_dict` (numpy arrays in the torch layout)."""
  out = {}
  for k, (path, layout, shape) in key_map(cfg, prefix).items():
    node = params
    for p in path:
      node = node[p]
    a = np.asarray(node, np.float32)
    if layout == 'g':
      a = a[:, None]
    elif layout == 'T':
      a = np.ascontiguousarray(a.T)
    if a.shape != shape:
      raise ConversionError(f'{"/".join(path)}: shape {a.shape} does not give {k} {shape}')
    out[k] = a
  return out


def load(path: str, cfg: NeuSConfig = NeuSConfig(), prefix: str = 'renderer.') -> Params:
  """Reads a RendererTrainer / NeuSRenderer checkpoint ({'state_dict': ...} or a bare state_dict)."""
  return convert_state_dict(load_state_dict(path, what='NeuS checkpoint'), cfg, prefix)
