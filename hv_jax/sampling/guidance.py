"""Guidance: the branches of a mode evaluated as one batch, and their epsilons combined.

The modes (their branches' condition multipliers, scales and combinations: Eq. 5, Eq. 9) are the table in
`modes.py`. Conditions here are (projected CLIP context, input-latent concat, frustum volumes); a branch scales
each by a constant, so all branches share one set of inputs and are evaluated by ONE `jax.vmap` over the
branch axis of those constants.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from hv_jax.sampling import modes


def branch_scales(mode: str, uc2_concat_scale: float = 4.0) -> jnp.ndarray:
  """[num_branches, 3] multipliers of (context, concat, volume) for each branch of `mode` (modes.MODES)."""
  return jnp.asarray(modes.mode(mode).multipliers(uc2_concat_scale), jnp.float32)


def combine(mode: str, eps, scales):
  """eps [num_branches, ...] -> guided eps (Eq. 5 / Eq. 9: modes.MODES).  scales: [2] = (s1, s2) for
  harmonyview, [1] = (s,) for cfg."""
  return modes.mode(mode).combine(eps, jnp.asarray(scales, jnp.float32))


def branch_eps(eps_fn: Callable, x_t, t, context, volumes: Sequence[jax.Array], x_concat, multipliers):
  """All branches' eps in one vmapped call.

  eps_fn(x_t, t, context, volumes, x_concat) -> eps is the UNet wrapper on M = B*N rows;
  multipliers [K, 3]. Returns [K, M, h, w, 4].
  """
  def one(m):
    vols = tuple(v * m[2] for v in volumes)
    return eps_fn(x_t, t, context * m[0], vols, x_concat * m[1])
  return jax.vmap(one)(multipliers)
