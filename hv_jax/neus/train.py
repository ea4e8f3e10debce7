"""One NeuS optimisation step (RendererTrainer.training_step + configure_optimizers of the original).

Optimizer: torch.optim.AdamW(lr=base_lr) defaults (betas 0.9/0.999, eps 1e-8, weight_decay 0.01, decoupled)
= optax.adamw with those numbers, over every parameter (variance and weight-norm g/v included), with the
original's LambdaLR factor `lr_factor` (linear warm-up from 0.02 to 1 over warm_up_steps, then x ratio every
1000 steps, ratio = 0.02 ** (1 / (total_steps // 1000))). Optimizer step k (from 0) uses factor(k), and
the renderer's `step` (cos-anneal) is the number of steps already taken, as Lightning's global_step.

`fit` runs the loop in chunks of up to STEPS_PER_CALL steps per compiled call (`train_steps_indexed`): batches
from `data.batch_indices` (a pure function of seed and step), the perturbation key fold_in(seed key, step),
orbax checkpoints of the whole train state every
`save_every` steps (a rerun resumes from the last one and reproduces the uninterrupted run), a
progress bar with the losses.

Resume identity: beside the checkpoints, `identity.json` records what they were trained from (the NeuS,
optimiser and batching settings, and the caller's `data_identity`, e.g. the input's sha256). A checkpoint is
resumed only when that record equals the current run's; otherwise (or without a record, from an older
version) `fit` raises CheckpointMismatch naming the differing settings, before any training.

`grid_lr_scale` (neus_fast only; 1 = the original): the feature grids of a GridSDFConfig field and the NeuS
variance train with base_lr * grid_lr_scale and no weight decay (grids want a much larger step than MLP
weights, and a short run needs the variance to sharpen faster).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from hv_jax import atomic, checks
from hv_jax.neus import data as neus_data
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
  grid_lr_scale: float = 1.0
  decay_interval: int = 1000   # the schedule's `interval` (decay by `ratio` every this many steps)
  chunks: int = 1              # rays processed in this many sequential chunks (memory; same gradient)


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


def _lr(tc: TrainConfig, scale: float = 1.0):
  if tc.use_warm_up:
    return lambda count: scale * tc.base_lr * lr_factor(count, tc.total_steps, tc.warm_up_steps, interval=tc.decay_interval)
  return scale * tc.base_lr


def _labels(params):
  fast = lambda path: any(getattr(k, 'key', None) in ('grids', 'variance') for k in path)
  return jax.tree_util.tree_map_with_path(lambda path, _: 'grid' if fast(path) else 'rest', params)


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
  rest = optax.adamw(_lr(tc), b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay)
  if tc.grid_lr_scale == 1.0:
    return rest
  grid = optax.adam(_lr(tc, tc.grid_lr_scale), b1=tc.b1, b2=tc.b2, eps=tc.eps)
  return optax.multi_transform({'grid': grid, 'rest': rest}, _labels)


class TrainState(NamedTuple):
  params: Params
  opt_state: Any
  step: jnp.ndarray   # optimizer steps taken (Lightning's global_step)


def init_state(params: Params, tc: TrainConfig) -> TrainState:
  params = jax.tree.map(jnp.asarray, params)
  return TrainState(params, make_optimizer(tc).init(params), jnp.zeros((), jnp.int32))


def _grads(params, batch, u, step, cfg: NeuSConfig, chunks: int):
  """(loss, terms, grads) of render_with_loss over the batch.

  With chunks > 1 the rays go through the network in `chunks` sequential pieces (lax.scan) and the
  gradient is accumulated exactly. Every loss term is a sum over rays divided by a constant: R for the
  colour and mask terms, and for the eikonal term the number of samples inside the cube (+ 1e-5 each),
  which depends only on the (gradient-free) sample depths. So a first pass samples the depths of every
  chunk (SDF forwards only, ~1/8 of the step) and counts, and the second pass differentiates each chunk's
  share of the exact loss.
  """
  n = batch['rays_o'].shape[0]
  if chunks == 1:
    def loss_fn(p):
      loss, _, terms = _loss_and_terms(p, batch, u, step, cfg)
      return loss, terms
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, terms, grads

  if n % chunks:
    raise ValueError(f'{n} rays do not split into {chunks} equal chunks (train.chunks)')
  split = lambda x: x.reshape((chunks, n // chunks) + x.shape[1:])
  b = {k: split(v) for k, v in batch.items()}
  uu = split(u)
  z = jax.lax.map(lambda x: render.depths(params, x[0], x[1], cfg, is_train=True, perturb_u=x[2]),
                  (b['rays_o'], b['rays_d'], uu))
  count = jnp.sum(jax.vmap(lambda o, d, zz: render.inner_count(o, d, zz, cfg))(b['rays_o'], b['rays_d'], z))
  den = count + 1e-5 * z.size

  def chunk_loss(p, x):
    out = render.render(p, x['rays_o'], x['rays_d'], cfg, is_train=True, step=step, z_vals=x['z'])
    s = render.loss_sums(out, x['rgb'], x.get('mask'), cfg)
    part = s['rgb'] * cfg.lambda_rgb_loss / n + s['eik_num'] * cfg.lambda_eikonal_loss / den
    if 'mask' in s:
      part = part + s['mask'] * cfg.lambda_mask_loss / n
    return part, s

  def body(carry, x):
    (_, s), g = jax.value_and_grad(chunk_loss, has_aux=True)(params, x)
    acc_s, acc_g = carry
    return (jax.tree.map(jnp.add, acc_s, s), jax.tree.map(jnp.add, acc_g, g)), None

  xs = dict(b, z=z)
  s0 = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                    jax.eval_shape(lambda: chunk_loss(params, jax.tree.map(lambda v: v[0], xs))[1]))
  (s, grads), _ = jax.lax.scan(body, (s0, jax.tree.map(jnp.zeros_like, params)), xs)
  s = dict(s, eik_den=den)
  loss, terms = render.combine_losses(s, n, cfg)
  return loss, terms, grads


def _loss_and_terms(p, batch, u, step, cfg):
  loss, terms, out = render.render_with_loss(p, batch, cfg, is_train=True, step=step, perturb_u=u)
  return loss, out, terms


def _step(state: TrainState, batch: Dict[str, jnp.ndarray], key, cfg: NeuSConfig, tc: TrainConfig):
  """render_with_loss(is_train=True, step=state.step) on `batch` {'rays_o','rays_d','rgb','mask'} [R, ...],
  the perturbation drawn from `key`; one AdamW update. Returns (new state, metrics)."""
  u = jax.random.uniform(key, (batch['rays_o'].shape[0], 1), jnp.float32)
  loss, terms, grads = _grads(state.params, batch, u, state.step, cfg, tc.chunks)
  opt = make_optimizer(tc)
  updates, opt_state = opt.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  lr = tc.base_lr * lr_factor(state.step, tc.total_steps, tc.warm_up_steps, interval=tc.decay_interval) \
      if tc.use_warm_up else tc.base_lr
  metrics = dict(terms, loss=loss, lr=jnp.asarray(lr, jnp.float32), grad_norm=optax.tree.norm(grads),
                 inv_s=fields.inv_s(state.params['variance']))
  return TrainState(params, opt_state, state.step + 1), metrics


train_step = jax.jit(_step, static_argnames=('cfg', 'tc'), donate_argnums=(0,))


STEPS_PER_CALL = 10     # the most train steps one call of train_steps_indexed runs
_fold_steps = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(None, 0)))   # (key, steps [K]) -> K keys


@functools.partial(jax.jit, static_argnames=('cfg', 'tc'), donate_argnums=(0,))
def train_steps_indexed(state: TrainState, data: Dict[str, jnp.ndarray], indices, keys, count, cfg: NeuSConfig,
                        tc: TrainConfig):
  """The first `count` of K = STEPS_PER_CALL train steps in one call: step k on the rays indices[k] [K, R] of the
  device-resident ray table `data`, perturbed from keys[k] [K, 2]. Returns (state after them, the last step's
  metrics).

  `count` is traced, so every chunk length runs the same program: a loop whose trip count XLA cannot see, and
  so cannot unroll or inline, which would round differently from one length to another (a static-length scan of
  2 or 6 steps did: ~1 ulp). One call per chunk spares the per-call costs: on XLA:CPU every call maps a fresh temp
  buffer (~230 MB for neus_fast: 60k page faults a step) and dispatches from Python (docs/neus.md, "Steps per
  call").
  """
  def body(k, carry):
    st, _ = carry
    batch = {name: jnp.take(data[name], indices[k], axis=0) for name in ('rays_o', 'rays_d', 'rgb', 'mask')}
    return _step(st, batch, keys[k], cfg, tc)
  shapes = jax.eval_shape(lambda: body(0, (state, None)))[1]
  metrics = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
  return jax.lax.fori_loop(0, count, body, (state, metrics))


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """RendererTrainer's batching and the run's bookkeeping."""
  batch_num: int = 3584        # train_batch_num: random rays per step
  fg_num: int = 512            # train_batch_fg_num: pseudo-foreground rays per step
  seed: int = 6033
  save_every: int = 500        # callbacks.save_interval
  log_every: int = 10


IDENTITY_FILE = 'identity.json'


class CheckpointMismatch(ValueError):
  """The checkpoints in a folder were trained from another input or other settings."""


def checkpoint_identity(cfg: NeuSConfig, tc: TrainConfig, lc: LoopConfig, data_identity=None) -> dict:
  """What a training state depends on (save_every / log_every do not change it), as plain JSON values."""
  ident = {'neus': cfg.to_dict(), 'train': dataclasses.asdict(tc),
           'loop': {'batch_num': lc.batch_num, 'fg_num': lc.fg_num, 'seed': lc.seed}, 'data': data_identity}
  return json.loads(json.dumps(ident))


def _check_identity(checkpoint_dir: str, ident: dict) -> None:
  path = os.path.join(checkpoint_dir, IDENTITY_FILE)
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError):
    stored = None
  if not isinstance(stored, dict):
    raise CheckpointMismatch(f'{checkpoint_dir} holds checkpoints without a record of their input and settings '
                             f'({IDENTITY_FILE}; made by an older version)')
  diff = checks.differing_keys(stored, ident)
  if diff:
    names = list(dict.fromkeys('input' if d == 'data' or d.startswith('data.') else d.replace('loop.', '')
                               for d in diff))
    raise CheckpointMismatch(f'{checkpoint_dir} holds checkpoints of another input/settings ({", ".join(names[:4])}'
                             f'{f" and {len(names) - 4} more" if len(names) > 4 else ""})')


def abstract_state(cfg: NeuSConfig, tc: TrainConfig):
  return jax.eval_shape(lambda: init_state(fields.init_params(jax.random.PRNGKey(0), cfg), tc))


def fit(data: Dict[str, np.ndarray], cfg: NeuSConfig, tc: TrainConfig, lc: LoopConfig,
        checkpoint_dir: str = '', progress: bool = True, on_log=None, data_identity=None):
  """Trains for tc.total_steps steps (resuming from `checkpoint_dir` when it holds a checkpoint made from the
  same settings and `data_identity`; CheckpointMismatch when it holds one of others).

  Returns (params, history) where history is a list of {'step', losses...} rows every log_every steps.
  """
  seed_key = jax.random.PRNGKey(lc.seed)
  manager = None
  state = None
  start = 0
  if checkpoint_dir:
    ident = checkpoint_identity(cfg, tc, lc, data_identity)
    manager = ocp.CheckpointManager(
        os.path.abspath(checkpoint_dir),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, save_interval_steps=lc.save_every, create=True))
    latest = manager.latest_step()
    if latest is not None:
      try:
        _check_identity(checkpoint_dir, ident)
      except CheckpointMismatch:
        manager.close()
        raise
      state = manager.restore(latest, args=ocp.args.StandardRestore(abstract_state(cfg, tc)))
      start = int(state.step)
    else:
      atomic.write_json(os.path.join(checkpoint_dir, IDENTITY_FILE), ident)
  if state is None:
    state = init_state(fields.init_params(seed_key, cfg), tc)
  try:
    return _loop(state, start, seed_key, data, cfg, tc, lc, manager, progress, on_log)
  finally:
    if manager is not None:
      manager.wait_until_finished()
      manager.close()


def _loop(state, start, seed_key, data, cfg, tc, lc, manager, progress, on_log):
  table = {k: jnp.asarray(data[k]) for k in ('rays_o', 'rays_d', 'rgb', 'mask')}
  total = table['rays_o'].shape[0]
  fg_index = data['fg_index']
  history = []
  bar = None
  if progress:
    bar = tqdm(total=tc.total_steps, initial=start, desc='neus', unit='step', dynamic_ncols=True)
  try:     # the bar is closed before an error (a diverged loss, Ctrl-C) is reported
    t0 = time.time()
    first = start
    while first < tc.total_steps:
      # a chunk ends at the next log row, checkpoint or the last step, after at most STEPS_PER_CALL steps
      done = min(tc.total_steps, first + STEPS_PER_CALL, (first // lc.log_every + 1) * lc.log_every,
                 (first // lc.save_every + 1) * lc.save_every)
      indices = np.zeros((STEPS_PER_CALL, lc.batch_num + (lc.fg_num if len(fg_index) else 0)), np.int32)
      for i, step in enumerate(range(first, done)):
        indices[i] = neus_data.batch_indices(step, lc.seed, total, lc.batch_num, fg_index, lc.fg_num)
      keys = _fold_steps(seed_key, jnp.arange(first, first + STEPS_PER_CALL, dtype=jnp.uint32))   # fold_in(seed key, step)
      state, metrics = train_steps_indexed(state, table, indices, keys, np.int32(done - first), cfg, tc)
      if done % lc.log_every == 0 or done == tc.total_steps:
        row = {'step': done, 'seconds': time.time() - t0, **{k: float(v) for k, v in metrics.items()}}
        history.append(row)
        if bar is not None:
          bar.set_postfix({k: f'{row[k]:.4f}' for k in ('loss', 'rendering', 'eikonal', 'mask') if k in row})
        if on_log is not None:
          on_log(row)
      if bar is not None:
        bar.update(done - first)
      if manager is not None and (done % lc.save_every == 0 or done == tc.total_steps):
        manager.save(done, args=ocp.args.StandardSave(state), force=True)
      first = done
  finally:
    if bar is not None:
      bar.close()
  return state.params, history
