"""E_flow, HarmonyView's multi-view consistency metric (eval_consistency.py), on hv_jax.metrics.raft.

For views i = 0..V-1 (V = 16) with cyclic neighbours, fwd_i = RAFT(view_i, view_{i+1}) and
bwd_i = RAFT(view_i, view_{i-1}) (iters=20, flow_up), computed on the ground truth and on each generated set;
  E_flow = mean_i 0.5 * (mean |fwd_i,gt - fwd_i,gen| + mean |bwd_i,gt - bwd_i,gen|),
each inner mean over all pixels and both flow channels (the reference sums the 16 view terms, then / 16).
GT views are RGBA PNGs composited on white in 0..255 (`convert_to_rgb`); generated views are the 16 slices of a
256 x 4096 RGB strip (np.array_split along the width).

Every view's fnet features and cnet context are computed once and shared by its forward and backward pair (the
reference recomputes them per pair: same values, the encoders act per image). All sets, GT first, run in one
jitted call, batched over sets and pairs.
"""
from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from hv_jax.metrics import raft


def composite_rgba(rgba):
  """eval_consistency.convert_to_rgb: rgb * (alpha / 255) + (255 - alpha), float32 in [0, 255]."""
  rgba = np.asarray(rgba)
  if rgba.shape[-1] != 4:
    raise ValueError(f'composite_rgba: want [..., 4] RGBA, got shape {rgba.shape}')
  x = rgba.astype(np.float32)
  a = x[..., 3:]
  return x[..., :3] * (a / np.float32(255)) + (np.float32(255) - a)


def cyclic_flows(params, views, iters=20):
  """views [V, H, W, 3] in [0, 255] -> (fwd, bwd) [V, H, W, 2]: flow from view i to i+1 and to i-1 (cyclic)."""
  fmap, net, inp = raft.encode(params, views)
  nxt, prv = jnp.roll(fmap, -1, axis=0), jnp.roll(fmap, 1, axis=0)   # row i: view i+1 / view i-1
  two = lambda x: jnp.concatenate([x, x], 0)
  _, up = raft.refine(params, two(fmap), jnp.concatenate([nxt, prv], 0), two(net), two(inp), iters)
  return up[:len(views)], up[len(views):]


def flow_errors(fwd_gt, bwd_gt, fwd, bwd):
  """Per-set E_flow from GT flows [V, H, W, 2] and generated flows [N, V, H, W, 2]."""
  per_view = 0.5 * (jnp.mean(jnp.abs(fwd_gt - fwd), axis=(2, 3, 4)) + jnp.mean(jnp.abs(bwd_gt - bwd), axis=(2, 3, 4)))
  return jnp.sum(per_view, axis=1) / per_view.shape[1]


@functools.partial(jax.jit, static_argnames=('batch_size',))
def _e_flow(params, gt_rgb, gen, iters, batch_size):
  sets = jnp.concatenate([gt_rgb[None], gen.astype(jnp.float32)], 0)   # GT first: its flows computed once
  one = lambda v: cyclic_flows(params, v, iters)
  fwd, bwd = jax.vmap(one)(sets) if batch_size is None else jax.lax.map(one, sets, batch_size=batch_size)
  return flow_errors(fwd[0], bwd[0], fwd[1:], bwd[1:])


@jax.jit
def _gen_errors(params, fwd_gt, bwd_gt, gen, iters):
  fwd, bwd = jax.vmap(lambda v: cyclic_flows(params, v, iters))(gen.astype(jnp.float32))
  return flow_errors(fwd_gt, bwd_gt, fwd, bwd)


_gt_flows = jax.jit(cyclic_flows)


def e_flow(params, gt_rgba, generated, iters: int = 20, batch_size: int | None = None, gt_cache: dict | None = None):
  """E_flow of each generated set: gt_rgba [V, H, W, 4] uint8, generated [N, V, H, W, 3] -> [N] float32.

  batch_size: how many view sets (GT included) go through RAFT at once (None: all N + 1); lower it to bound
  memory. `iters` is traced, so changing it does not recompile. gt_cache: a dict that keeps the GT flows
  between calls (keyed by the GT's bytes and iters), for callers that score one set at a time against the
  same GT (diversity studies): the GT's RAFT passes then run once instead of once per call.
  """
  gt_rgba, generated = np.asarray(gt_rgba), np.asarray(generated)
  if gt_rgba.ndim != 4 or gt_rgba.shape[-1] != 4:
    raise ValueError(f'e_flow: GT views must be [V, H, W, 4] RGBA, got shape {gt_rgba.shape}')
  if generated.ndim != 5 or generated.shape[-1] != 3:
    raise ValueError(f'e_flow: generated views must be [N, V, H, W, 3] RGB, got shape {generated.shape} '
                     '(one set: add a leading axis)')
  if generated.shape[1:4] != gt_rgba.shape[:3]:
    raise ValueError(f'e_flow: generated views {generated.shape[1:4]} and GT views {gt_rgba.shape[:3]} differ '
                     'in [V, H, W]')
  if gt_rgba.shape[0] < 2:
    raise ValueError(f'e_flow: need at least 2 views, got {gt_rgba.shape[0]}')
  raft.check_size(*gt_rgba.shape[1:3])
  if gt_cache is None:
    return np.asarray(_e_flow(params, composite_rgba(gt_rgba), generated, jnp.int32(iters), batch_size))
  key = (hashlib.sha1(gt_rgba.tobytes()).hexdigest(), gt_rgba.shape, int(iters))
  if key not in gt_cache:
    gt_cache[key] = _gt_flows(params, jnp.asarray(composite_rgba(gt_rgba)), jnp.int32(iters))
  fwd_gt, bwd_gt = gt_cache[key]
  return np.asarray(_gen_errors(params, fwd_gt, bwd_gt, generated, jnp.int32(iters)))
