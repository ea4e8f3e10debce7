"""CLIP image tower: parity with the recorded PyTorch fixtures, and the bicubic resize vs torch."""
from __future__ import annotations

import json
import os
import pathlib

import chex
import jax
import numpy as np
import pytest

from hv_jax.models import clip
from hv_jax.models.config import ModelConfig

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_PARITY_DIR = _ROOT / os.environ.get('HV_PARITY_DIR', 'tests/fixtures/parity')
_PREFIX = 'clip_image_encoder.model.visual.'


def _torch_visual_to_flax(state_dict, prefix):
  """Maps OpenAI-CLIP visual keys under `prefix` to the CLIPVisionTower param tree (numpy).

  Numeric key segments merge into the previous name ('resblocks.0' -> 'resblocks_0'); Linear [out, in]
  -> kernel [in, out]; conv OIHW -> HWIO; norm weight -> scale; `attn.in_proj_weight/bias` ->
  attn/in_proj/kernel (transposed) / bias; class_embedding, positional_embedding, proj kept as-is.
  """
  params = {}
  for key, value in state_dict.items():
    if not key.startswith(prefix):
      continue
    value = value.detach().cpu().numpy()
    parts = []
    for seg in key[len(prefix):].split('.'):
      if seg.isdigit():
        parts[-1] = f'{parts[-1]}_{seg}'
      else:
        parts.append(seg)
    leaf = parts[-1]
    if leaf in ('class_embedding', 'positional_embedding', 'proj') and len(parts) == 1:
      path = parts
    elif leaf == 'in_proj_weight':
      path, value = parts[:-1] + ['in_proj', 'kernel'], value.T
    elif leaf == 'in_proj_bias':
      path = parts[:-1] + ['in_proj', 'bias']
    elif leaf == 'bias':
      path = parts
    elif leaf == 'weight' and value.ndim == 4:
      path, value = parts[:-1] + ['kernel'], value.transpose(2, 3, 1, 0)
    elif leaf == 'weight' and value.ndim == 2:
      path, value = parts[:-1] + ['kernel'], value.T
    elif leaf == 'weight' and value.ndim == 1:
      path = parts[:-1] + ['scale']
    else:
      raise ValueError(f'unmapped key {key} {value.shape}')
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = np.ascontiguousarray(value)
  return params


def _tol(ref):
  return dict(atol=1e-4 * max(1., float(np.abs(ref).max())), rtol=1e-4)


def test_parity_with_fixtures():
  torch = pytest.importorskip('torch')
  if not (_PARITY_DIR / 'fixtures.npz').exists():
    pytest.skip(f'no parity fixtures in {_PARITY_DIR}')
  fx = np.load(_PARITY_DIR / 'fixtures.npz')
  cfg = ModelConfig.from_dict(json.loads((_PARITY_DIR / 'config.json').read_text())['tiny']).clip
  sd = torch.load(_PARITY_DIR / 'syncdreamer_tiny.ckpt', map_location='cpu', weights_only=True)['state_dict']
  params = _torch_visual_to_flax(sd, _PREFIX)

  # The converted tree must match the module's own tree exactly (names, shapes).
  x = fx['input_image']
  shapes = jax.eval_shape(clip.CLIPVisionTower(cfg).init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, cfg.image_resolution, cfg.image_resolution, 3),
                                               np.float32))['params']
  chex.assert_trees_all_equal_shapes_and_dtypes(params, shapes)

  with jax.default_matmul_precision('highest'):
    pre = jax.jit(clip.preprocess, static_argnums=1)(x, cfg)
    emb = jax.jit(clip.encode, static_argnums=2)(params, x, cfg)
  ref_pre = fx['clip_preprocessed'].transpose(0, 2, 3, 1)
  ref_emb = fx['clip_embed']
  print('clip_preprocessed max abs err', float(np.abs(np.asarray(pre) - ref_pre).max()))
  print('clip_embed max abs err', float(np.abs(np.asarray(emb) - ref_emb).max()))
  chex.assert_trees_all_close(np.asarray(pre), ref_pre, **_tol(ref_pre))
  chex.assert_shape(emb, ref_emb.shape)
  chex.assert_trees_all_close(np.asarray(emb), ref_emb, **_tol(ref_emb))


@pytest.mark.parametrize('in_hw', [(64, 64), (256, 256), (37, 300)])
def test_bicubic_resize_matches_torch(in_hw):
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(0).uniform(-1, 1, (2, *in_hw, 3)).astype(np.float32)
  ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(224, 224),
                                        mode='bicubic', align_corners=True)
  ref = ref.permute(0, 2, 3, 1).numpy()
  out = np.asarray(jax.jit(clip.resize_bicubic, static_argnums=1)(x, (224, 224)))
  chex.assert_trees_all_close(out, ref, atol=1e-5, rtol=0)
