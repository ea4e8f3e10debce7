"""Diffusion schedules of the original (`SyncMultiviewDiffusion._init_schedule`, `SyncDDIMSampler._make_schedule`).

Legend: beta_t, alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s (alphas_cumprod);
DDIM at sub-sequence tau_i: a = abar[tau_i], a_prev = abar[tau_{i-1}] (abar[0] for i = 0),
sigma_i = eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)).
"""
from __future__ import annotations

import dataclasses

import numpy as np

NUM_TIMESTEPS = 1000
LINEAR_START, LINEAR_END = 0.00085, 0.0120


def betas() -> np.ndarray:
  """Scaled-linear betas, bit-exact to torch.linspace(sqrt(0.00085), sqrt(0.012), 1000, float32) ** 2.

  torch's CPU linspace rounds start/end/step to float32, evaluates start + step*i for the first half
  and end - step*(n-1-i) for the second in higher precision, then rounds.
  """
  n = NUM_TIMESTEPS
  start, end = np.float32(np.sqrt(LINEAR_START)), np.float32(np.sqrt(LINEAR_END))
  step = np.float32((end - start) / np.float32(n - 1))
  i = np.arange(n, dtype=np.float64)
  lin = np.where(i < n // 2, np.float64(start) + np.float64(step) * i,
                 np.float64(end) - np.float64(step) * (n - 1 - i)).astype(np.float32)
  return lin * lin


def alphas_cumprod() -> np.ndarray:
  """abar_t, bit-exact to torch.cumprod on the float32 alphas (CPU accumulates in double)."""
  a = (np.float32(1.0) - betas()).astype(np.float32)
  return np.cumprod(a.astype(np.float64)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class DDIMSchedule:
  timesteps: np.ndarray        # [S] int, ascending: range(0, 1000, 1000 // S) + 1
  alphas: np.ndarray           # [S] float32, abar at the timesteps
  alphas_prev: np.ndarray      # [S]
  sigmas: np.ndarray           # [S]
  sqrt_one_minus_alphas: np.ndarray  # [S]


def ddim_schedule(num_steps: int, eta: float = 1.0, abar: np.ndarray | None = None) -> DDIMSchedule:
  """SyncDDIMSampler._make_schedule('uniform'): sigma in float64 from the float32 abar, stored float32."""
  if not 1 <= num_steps <= NUM_TIMESTEPS:
    raise ValueError(f'DDIM steps must be in [1, {NUM_TIMESTEPS}], got {num_steps}')
  abar = alphas_cumprod() if abar is None else abar
  ts = np.arange(0, NUM_TIMESTEPS, NUM_TIMESTEPS // num_steps) + 1
  a = abar[ts].astype(np.float64)
  a_prev = np.concatenate([abar[:1], abar[ts[:-1]]]).astype(np.float32)
  sig = eta * np.sqrt((1 - a_prev.astype(np.float64)) / (1 - a) * (1 - a / a_prev.astype(np.float64)))
  a32 = a.astype(np.float32)
  return DDIMSchedule(timesteps=ts.astype(np.int64), alphas=a32, alphas_prev=a_prev,
                      sigmas=sig.astype(np.float32),
                      sqrt_one_minus_alphas=np.sqrt(np.float32(1) - a32).astype(np.float32))
