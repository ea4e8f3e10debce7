"""One NeuS optimisation step (RendererTrainer.training_step + configure_optimizers of the original).

Optimizer: torch.optim.AdamW(lr=base_lr) defaults (betas 0.9/0.999, eps 1e-8, weight_decay 0.01, decoupled)
= optax.adamw with those numbers, over every parameter (variance and weight-norm g/v included), with the
original's LambdaLR factor `lr_factor` (linear warm-up from 0.02 to 1 over warm_up_steps, then x ratio every
1000 steps, ratio = 0.02 ** (1 / (total_steps // 1000))). Optimizer step k (from 0) uses factor(k), and
the renderer's `step` (cos-anneal) is the number of steps already taken, as Lightning's global_step.

Ray batching (random rays + foreground rays, reshuffling), logging and checkpoints are not here.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hv_jax.neus import fields, render
from hv_jax.neus.fields import NeuSConfig, Params


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """configs/neus.yaml: model.base_lr and model.params.{total_steps, warm_up_steps, use_warm_up}."""
  base_lr: float = 5e-4
  total_steps: int = 2000
  warm_up_steps: int = 100
  use_warm_up: bool = True
  weight_decay: float = 0.01   # torch AdamW default
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8


def lr_factor(step, total_steps: int, warm_up_steps: int, warm_up_init: float = 0.02, warm_up_end: float = 1.0,
              final_lr: float = 0.02, interval: int = 1000):
  """RendererTrainer.configure_optimizers.schedule_fn (a multiplier of base_lr)."""
  times = total_steps // interval
  if times == 0:
    raise ValueError(f'total_steps={total_steps} < {interval}: the original schedule divides by '
                     f'total_steps // {interval} = 0 (use_warm_up=False for shorter runs)')
  ratio = float(np.power(final_lr, 1 / times))
  step = jnp.asarray(step)
  warm = (step / warm_up_steps) * (warm_up_end - warm_up_init) + warm_up_init
  decay = jnp.power(ratio, (step // interval).astype(jnp.float32)) * warm_up_end
  return jnp.where(step < warm_up_steps, warm, decay)


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
  if tc.use_warm_up:
    lr = lambda count: tc.base_lr * lr_factor(count, tc.total_steps, tc.warm_up_steps)
  else:
    lr = tc.base_lr
  return optax.adamw(lr, b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay)


class TrainState(NamedTuple):
  params: Params
  opt_state: Any
  step: jnp.ndarray   # optimizer steps taken (Lightning's global_step)


def init_state(params: Params, tc: TrainConfig) -> TrainState:
  params = jax.tree.map(jnp.asarray, params)
  return TrainState(params, make_optimizer(tc).init(params), jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnames=('cfg', 'tc'), donate_argnums=(0,))
def train_step(state: TrainState, batch: Dict[str, jnp.ndarray], key, cfg: NeuSConfig, tc: TrainConfig):
  """render_with_loss(is_train=True, step=state.step) on `batch` {'rays_o','rays_d','rgb','mask'} [R, ...],
  the perturbation drawn from `key`; one AdamW update. Returns (new state, metrics)."""
  u = jax.random.uniform(key, (batch['rays_o'].shape[0], 1), jnp.float32)

  def loss_fn(p):
    loss, terms, _ = render.render_with_loss(p, batch, cfg, is_train=True, step=state.step, perturb_u=u)
    return loss, terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  opt = make_optimizer(tc)
  updates, opt_state = opt.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  lr = tc.base_lr * lr_factor(state.step, tc.total_steps, tc.warm_up_steps) if tc.use_warm_up else tc.base_lr
  metrics = dict(terms, loss=loss, lr=jnp.asarray(lr, jnp.float32), grad_norm=optax.tree.norm(grads),
                 inv_s=fields.inv_s(state.params['variance']))
  return TrainState(params, opt_state, state.step + 1), metrics
