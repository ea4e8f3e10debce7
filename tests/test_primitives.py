"""Live checks against torch of the primitives whose conventions are easy to get wrong (random inputs).

Layouts go through the converter's own transforms (`convert.names.TRANSFORMS`), so these also prove the
mapping table's layout rules.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert import names
from hv_jax.models import clip, layers
from hv_jax.models.config import Lowering

torch = pytest.importorskip('torch', reason='live parity checks need torch: pip install torch==2.13.0')
F = torch.nn.functional
RNG = np.random.default_rng(0)


def _t(a):
  return torch.from_numpy(np.ascontiguousarray(a))


def _close(got, ref, atol=1e-5):
  chex.assert_trees_all_close(np.asarray(got), np.asarray(ref), atol=atol, rtol=0)


def test_grid_sample_2d():
  feats = RNG.normal(size=(3, 5, 7, 4)).astype(np.float32)
  grid = RNG.uniform(-1.3, 1.3, size=(3, 6, 9, 2)).astype(np.float32)   # some samples fall outside
  grid[0, 0, 0] = [-1, -1]; grid[0, 0, 1] = [1, 1]; grid[0, 0, 2] = [1.0001, 0]
  ref = F.grid_sample(_t(feats).permute(0, 3, 1, 2), _t(grid), mode='bilinear', padding_mode='zeros',
                      align_corners=True).permute(0, 2, 3, 1).numpy()
  _close(layers.grid_sample_2d(feats, grid), ref)


def test_grid_sample_3d():
  feats = RNG.normal(size=(2, 4, 5, 6, 3)).astype(np.float32)
  grid = RNG.uniform(-1.2, 1.2, size=(2, 3, 4, 5, 3)).astype(np.float32)
  ref = F.grid_sample(_t(feats).permute(0, 4, 1, 2, 3), _t(grid), mode='bilinear', padding_mode='zeros',
                      align_corners=True).permute(0, 2, 3, 4, 1).numpy()
  _close(layers.grid_sample_3d(feats, grid), ref)


@pytest.mark.parametrize('size', [2, 3, 4])
def test_conv_transpose3d(size):
  m = torch.nn.ConvTranspose3d(6, 4, kernel_size=3, padding=1, output_padding=1, stride=2)
  x = RNG.normal(size=(2, size, size + 1, size, 6)).astype(np.float32)
  ref = m(_t(x).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).detach().numpy()
  params = {'kernel': names.TRANSFORMS['conv_transpose3d'](m.weight.detach().numpy()), 'bias': m.bias.detach().numpy()}
  _close(layers.ConvTranspose3d(4).apply({'params': params}, x), ref)


@pytest.mark.parametrize('ndim,stride,padding', [(2, 1, 1), (2, 2, 1), (3, 1, 1), (3, 2, 1), (2, 1, 0)])
def test_conv_layouts(ndim, stride, padding):
  cls = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
  m = cls(5, 7, 3, stride=stride, padding=padding)
  x = RNG.normal(size=(2,) + (8,) * ndim + (5,)).astype(np.float32)
  perm_in = (0, ndim + 1) + tuple(range(1, ndim + 1))
  perm_out = (0,) + tuple(range(2, ndim + 2)) + (1,)
  ref = m(_t(x).permute(*perm_in)).permute(*perm_out).detach().numpy()
  k = names.TRANSFORMS['conv2d' if ndim == 2 else 'conv3d'](m.weight.detach().numpy())
  out = layers.conv(7, 3, stride=stride, padding=padding, ndim=ndim).apply(
      {'params': {'kernel': k, 'bias': m.bias.detach().numpy()}}, x)
  _close(out, ref)


@pytest.mark.parametrize('impl', ['tuned', 'xla'])
@pytest.mark.parametrize('stride,shape', [(1, (7, 5, 6)), (2, (7, 5, 6)), (1, (3, 2, 2))])
def test_conv3d_lowerings(impl, stride, shape):
  """Both lowerings of a 3-d conv (depth-folded 2-d conv / lax 3-d conv) on odd, non-cubic shapes."""
  lowering = Lowering(conv=impl)
  m = torch.nn.Conv3d(5, 7, 3, stride=stride, padding=1)
  x = RNG.normal(size=(2,) + shape + (5,)).astype(np.float32)
  ref = m(_t(x).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).detach().numpy()
  k = names.TRANSFORMS['conv3d'](m.weight.detach().numpy())
  out = layers.conv(7, 3, stride=stride, padding=1, ndim=3, lowering=lowering).apply(
      {'params': {'kernel': k, 'bias': m.bias.detach().numpy()}}, x)
  _close(out, ref)
  mt = torch.nn.ConvTranspose3d(5, 4, kernel_size=3, padding=1, output_padding=1, stride=2)
  ref_t = mt(_t(x).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).detach().numpy()
  params = {'kernel': names.TRANSFORMS['conv_transpose3d'](mt.weight.detach().numpy()), 'bias': mt.bias.detach().numpy()}
  _close(layers.ConvTranspose3d(4, lowering=lowering).apply({'params': params}, x), ref_t)


@pytest.mark.parametrize('impl', ['tuned', 'xla'])
@pytest.mark.parametrize('kernel,hw,upsample', [(1, (5, 6), False), (3, (4, 3), False), (3, (3, 5), True)])
def test_conv2d_lowerings(impl, kernel, hw, upsample):
  """Both lowerings of the 2-d convs the tuned one rewrites: 1x1 (matmul), 3x3 on a small map (im2col), and
  the 3x3 conv of a nearest-2x-upsampled map (four phase convs), against torch."""
  m = torch.nn.Conv2d(5, 7, kernel, padding=kernel // 2)
  x = RNG.normal(size=(2,) + hw + (5,)).astype(np.float32)
  xt = _t(x).permute(0, 3, 1, 2)
  ref = m(F.interpolate(xt, scale_factor=2, mode='nearest') if upsample else xt).permute(0, 2, 3, 1).detach().numpy()
  k = names.TRANSFORMS['conv2d'](m.weight.detach().numpy())
  out = layers.conv(7, kernel, upsample=upsample, lowering=Lowering(conv=impl)).apply(
      {'params': {'kernel': k, 'bias': m.bias.detach().numpy()}}, x)
  _close(out, ref)


def test_linear_layout():
  m = torch.nn.Linear(6, 3)
  x = RNG.normal(size=(4, 6)).astype(np.float32)
  out = layers.dense(3).apply({'params': {'kernel': names.TRANSFORMS['linear'](m.weight.detach().numpy()),
                                          'bias': m.bias.detach().numpy()}}, x)
  _close(out, m(_t(x)).detach().numpy())


@pytest.mark.parametrize('groups,eps', [(32, 1e-5), (32, 1e-6), (8, 1e-5)])
def test_group_norm(groups, eps):
  m = torch.nn.GroupNorm(groups, 64, eps=eps)
  with torch.no_grad():
    m.weight.normal_(); m.bias.normal_()
  x = (RNG.normal(size=(2, 3, 4, 5, 64)) * 3 + 1).astype(np.float32)
  ref = m(_t(x).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).detach().numpy()
  out = layers.GroupNorm(groups, eps).apply({'params': {'scale': m.weight.detach().numpy(),
                                                        'bias': m.bias.detach().numpy()}}, x)
  _close(out, ref)


def test_clip_multihead_attention():
  m = torch.nn.MultiheadAttention(64, 2)
  x = RNG.normal(size=(3, 10, 64)).astype(np.float32)          # [B, L, W]
  ref = m(*([_t(x).permute(1, 0, 2)] * 3), need_weights=False)[0].permute(1, 0, 2).detach().numpy()
  params = {'in_proj': {'kernel': m.in_proj_weight.detach().numpy().T, 'bias': m.in_proj_bias.detach().numpy()},
            'out_proj': {'kernel': m.out_proj.weight.detach().numpy().T, 'bias': m.out_proj.bias.detach().numpy()}}
  _close(clip.MultiheadAttention(2).apply({'params': params}, x), ref)


def test_timestep_embedding():
  t = np.array([0, 1, 2, 250, 501, 751, 981, 999])
  for dim in (256, 320):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
    args = _t(t)[:, None].float() * freqs[None]
    ref = torch.cat([torch.cos(args), torch.sin(args)], -1).numpy()
    # torch's float32 exp may be 1 ulp off the correctly rounded frequency: t*f moves by <= t * 2^-23.
    _close(layers.timestep_embedding(t, dim), ref, atol=1e-4)


@pytest.mark.parametrize('in_hw', [(64, 64), (256, 256), (37, 300)])
def test_bicubic_resize_align_corners(in_hw):
  x = RNG.uniform(-1, 1, (2, *in_hw, 3)).astype(np.float32)
  ref = F.interpolate(_t(x).permute(0, 3, 1, 2), size=(224, 224), mode='bicubic', align_corners=True)
  out = jax.jit(clip.resize_bicubic, static_argnums=1)(x, (224, 224))
  _close(out, ref.permute(0, 2, 3, 1).numpy())


def test_upsample_nearest():
  x = RNG.normal(size=(2, 3, 5, 4)).astype(np.float32)
  ref = F.interpolate(_t(x).permute(0, 3, 1, 2), scale_factor=2, mode='nearest').permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_equal(np.asarray(layers.upsample_nearest_2x(jnp.asarray(x))), ref)
