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


SPACINGS = ('uniform', 'uniform_exact')


class ScheduleError(ValueError):
  """A step count the chosen spacing cannot run exactly (one line: the nearest counts that work)."""


def ddim_timesteps(num_steps: int, spacing: str = 'uniform') -> np.ndarray:
  """The ascending DDIM timesteps, exactly `num_steps` of them in [1, 999], or ScheduleError.

  'uniform' is the original's (SyncDDIMSampler._make_schedule, ddim_discretize='uniform'):
  range(0, 1000, 1000 // n) + 1. It gives n timesteps only when n divides 1000 (1, 2, 4, 5, 8, 10, 20, 25, 40,
  50, ...); for other n the original runs more steps than asked (7 -> 8) or indexes t = 1000 and crashes (3),
  so those counts are refused here. 'uniform_exact' is floor(i * 1000 / n) + 1, i < n: exactly n evenly spaced
  steps for any n in [1, 999], equal to 'uniform' wherever n divides 1000.
  """
  n = int(num_steps)
  if spacing not in SPACINGS:
    raise ScheduleError(f'unknown DDIM spacing {spacing!r}; expected one of {SPACINGS}')
  if not 1 <= n < NUM_TIMESTEPS:
    raise ScheduleError(f'DDIM steps must be in [1, {NUM_TIMESTEPS - 1}] (timesteps 1..{NUM_TIMESTEPS - 1} '
                        f'of the {NUM_TIMESTEPS}-step schedule), got {n}')
  if spacing == 'uniform_exact':
    return np.arange(n, dtype=np.int64) * NUM_TIMESTEPS // n + 1
  ts = np.arange(0, NUM_TIMESTEPS, NUM_TIMESTEPS // n, dtype=np.int64) + 1
  if len(ts) != n or ts[-1] >= NUM_TIMESTEPS:
    ok = exact_uniform_counts()
    lower, higher = max(c for c in ok if c < n), min((c for c in ok if c > n), default=None)
    what = (f'reaches t={ts[-1]}, beyond the {NUM_TIMESTEPS}-step schedule' if ts[-1] >= NUM_TIMESTEPS
            else f'gives {len(ts)} timesteps')
    nearest = f'{lower} and {higher}' if higher else f'{lower}'
    raise ScheduleError(f'{n} DDIM steps: the original schedule range(0, {NUM_TIMESTEPS}, {NUM_TIMESTEPS // n}) + 1 '
                        f'{what}; it runs exactly n steps only for n dividing {NUM_TIMESTEPS} (nearest: {nearest}); '
                        f"set ddim_spacing='uniform_exact' for exactly {n} evenly spaced steps")
  return ts


def exact_uniform_counts() -> list:
  """The step counts that the original 'uniform' schedule runs exactly: the divisors of 1000 below 1000."""
  return [n for n in range(1, NUM_TIMESTEPS) if NUM_TIMESTEPS % n == 0]


@dataclasses.dataclass(frozen=True)
class DDIMSchedule:
  timesteps: np.ndarray        # [S] int, ascending (ddim_timesteps)
  alphas: np.ndarray           # [S] float32, abar at the timesteps
  alphas_prev: np.ndarray      # [S]
  sigmas: np.ndarray           # [S]
  sqrt_one_minus_alphas: np.ndarray  # [S]


def ddim_schedule(num_steps: int, eta: float = 1.0, abar: np.ndarray | None = None,
                  spacing: str = 'uniform') -> DDIMSchedule:
  """SyncDDIMSampler._make_schedule: sigma in float64 from the float32 abar, stored float32."""
  abar = alphas_cumprod() if abar is None else abar
  ts = ddim_timesteps(num_steps, spacing)
  a = abar[ts].astype(np.float64)
  a_prev = np.concatenate([abar[:1], abar[ts[:-1]]]).astype(np.float32)
  sig = eta * np.sqrt((1 - a_prev.astype(np.float64)) / (1 - a) * (1 - a / a_prev.astype(np.float64)))
  a32 = a.astype(np.float32)
  return DDIMSchedule(timesteps=ts.astype(np.int64), alphas=a32, alphas_prev=a_prev,
                      sigmas=sig.astype(np.float32),
                      sqrt_one_minus_alphas=np.sqrt(np.float32(1) - a32).astype(np.float32))
