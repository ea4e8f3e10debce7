"""One DDIM update, as `SyncDDIMSampler.denoise_apply_impl` of the original.

Legend (Song et al. 2021, Eq. 12): x_t noisy latent, eps predicted noise, a_t = abar_t, a_prev = abar_{t-1},
sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).
  1. pred_x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
  2. dir_xt  = sqrt(max(1 - a_prev - sigma_t^2, 1e-7)) eps        (the original clamps at 1e-7)
  3. x_prev  = sqrt(a_prev) pred_x0 + dir_xt + sigma_t z,  z ~ N(0, I), no noise at the last step (index 0)
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from hv_jax.sampling import schedule


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DDIMTables:
  """Per-index DDIM constants as arrays (a pytree, so it can enter jit). Index i runs at timesteps[i]."""
  timesteps: jax.Array               # [S] int32
  alphas: jax.Array                  # [S]
  alphas_prev: jax.Array             # [S]
  sqrt_one_minus_alphas: jax.Array   # [S]
  sigmas_eta1: jax.Array             # [S] sigma at eta = 1 (sigma is linear in eta, so eta stays a traced scalar)

  @classmethod
  def make(cls, num_steps: int, spacing: str = 'uniform') -> 'DDIMTables':
    s = schedule.ddim_schedule(num_steps, eta=1.0, spacing=spacing)
    return cls(jnp.asarray(s.timesteps, jnp.int32), jnp.asarray(s.alphas), jnp.asarray(s.alphas_prev),
               jnp.asarray(s.sqrt_one_minus_alphas), jnp.asarray(s.sigmas))

  @property
  def num_steps(self) -> int:
    return self.timesteps.shape[0]


def ddim_update(x_t, eps, tables: DDIMTables, index, eta, noise):
  """x_{t-1} from x_t and the guided eps at DDIM index `index` (traced int); noise is skipped at index 0."""
  a_t = tables.alphas[index]
  a_prev = tables.alphas_prev[index]
  sigma = (jnp.asarray(eta, jnp.float32) * tables.sigmas_eta1[index]).astype(jnp.float32)
  pred_x0 = (x_t - tables.sqrt_one_minus_alphas[index] * eps) / jnp.sqrt(a_t)
  dir_xt = jnp.sqrt(jnp.maximum(np.float32(1.) - a_prev - sigma ** 2, np.float32(1e-7))) * eps
  x_prev = jnp.sqrt(a_prev) * pred_x0 + dir_xt
  return jnp.where(index == 0, x_prev, x_prev + sigma * noise)
