"""Sampler parity with the original SyncDDIMSampler: schedules, conditioning, one denoise step per guidance
mode and the recorded DDIM trajectory (recorded x_T and step noise injected), read from HV_PARITY_DIR.

Tolerances: schedules and conditioning as single forward keys (1e-5 x scale); a denoise step divides by
sqrt(abar) and multiplies branch differences by up to 1 + s1 + s2, and the trajectory compounds S steps,
so those use the fixture README's bound for built-up values: rtol 1e-3, atol 1e-3 x max|ref|.
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity as P

pytest.importorskip('torch', reason='parity tests convert the PyTorch checkpoint: pip install torch==2.13.0')
pytestmark = pytest.mark.skipif(not P.available(), reason=f'no parity fixtures in {P.PARITY_DIR}')

from hv_jax.sampling import schedule  # noqa: E402
from hv_jax.sampling.sampler import Condition, Sampler, SamplerConfig  # noqa: E402


def _lat(a):
  """[B, N, 4, h, w] (or [S, B, N, 4, h, w]) fixture latents -> channels-last."""
  return np.moveaxis(np.asarray(a), -3, -1)


def _close(got, ref, rel=1e-5, rtol=0.):
  ref = np.asarray(ref)
  chex.assert_shape(np.asarray(got), ref.shape)
  chex.assert_trees_all_close(np.asarray(got), ref, atol=rel * max(1., float(np.abs(ref).max())), rtol=rtol)


def _steps():
  return len(P.fixtures()['ddim_timesteps'])


@functools.lru_cache(None)
def _sampler(mode):
  return Sampler(P.model_config(), SamplerConfig(steps=_steps(), guidance=mode))


def _cond():
  f = P.fixtures()
  return Condition(clip_embed=jnp.asarray(f['clip_embed']), x_input=jnp.asarray(P.nhwc(f['x_input'])),
                   v_embed=jnp.asarray(f['v_embed']))


def _scales(mode):
  c = P.config_json()['constants']
  b = P.fixtures()['x_t'].shape[0]
  s = [c['dg_scales']['s1'], c['dg_scales']['s2']] if mode == 'harmonyview' else [c['cfg_scale']]
  return jnp.tile(jnp.asarray(s, jnp.float32)[None], (b, 1))


def test_schedules():
  f = P.fixtures()
  np.testing.assert_array_equal(schedule.betas(), f['betas'])
  np.testing.assert_array_equal(schedule.alphas_cumprod(), f['alphas_cumprod'])
  for prefix, steps in (('ddim_', _steps()), ('ddim50_', 50)):
    s = schedule.ddim_schedule(steps)
    np.testing.assert_array_equal(s.timesteps, f[prefix + 'timesteps'])
    for name in ('alphas', 'alphas_prev', 'sigmas', 'sqrt_one_minus_alphas'):
      if prefix + name in f:
        _close(getattr(s, name), f[prefix + name], rel=1e-6)


def test_condition():
  """prepare(): CLIP embedding, posterior-sampled input latent (recorded noise), viewpoint embedding."""
  f = P.fixtures()
  s = _sampler('harmonyview')
  cond = jax.jit(s.condition)(P.converted_params(), jnp.asarray(f['input_image']), jnp.asarray(f['input_elevation']),
                              None, jnp.asarray(P.nhwc(f['vae_sample_noise'])))
  _close(cond.clip_embed, f['clip_embed'])
  _close(cond.x_input, P.nhwc(f['x_input']))
  _close(cond.v_embed, f['v_embed'])
  mode = Sampler(P.model_config(), SamplerConfig(steps=_steps(), latent='mode'))
  _close(jax.jit(mode.condition)(P.converted_params(), jnp.asarray(f['input_image']),
                                 jnp.asarray(f['input_elevation'])).x_input, P.nhwc(f['vae_mode_latent']))


@pytest.mark.parametrize('mode,key', [('harmonyview', 'ddim_step_out_dg'), ('cfg', 'ddim_step_out_cfg')])
def test_denoise_step(mode, key):
  """One full step from x_t: volumes, all guidance branches in one call, the guided eps and the DDIM update."""
  f = P.fixtures()
  s = _sampler(mode)
  out = jax.jit(s.denoise_step)(P.converted_params(), jnp.asarray(_lat(f['x_t'])), _cond(),
                                jnp.asarray(f['step_index']), _scales(mode), 1.0,
                                jnp.asarray(_lat(f['ddim_step_noise'])))
  _close(out, _lat(f[key]), rel=1e-3, rtol=1e-3)


def test_ddim_trajectory():
  """SyncDDIMSampler.sample with the recorded x_T and step noise: x after every step, x_0 and the decode."""
  f = P.fixtures()
  s = _sampler('harmonyview')
  run = jax.jit(lambda p, xT, z, sc: s.sample_latents(p, _cond(), xT, sc, 1.0, noises=z, return_intermediates=True))
  x0, inter = run(P.converted_params(), jnp.asarray(_lat(f['run_x_T'])), jnp.asarray(_lat(f['run_noises'])),
                  _scales('harmonyview'))
  for i in range(inter.shape[0]):
    _close(inter[i], _lat(f['run_x_inter'][i]), rel=1e-3, rtol=1e-3)
  _close(x0, _lat(f['run_x0']), rel=1e-3, rtol=1e-3)
  decoded = jax.jit(s.decode)(P.converted_params(), jnp.asarray(_lat(f['run_x0'])))
  _close(decoded, np.moveaxis(f['run_decoded'], -3, -1), rel=1e-5)


def test_shared_volumes_equal_per_branch_volumes():
  """Building the volumes once for all branches equals rebuilding them in every branch."""
  f = P.fixtures()
  s = _sampler('harmonyview')
  from hv_jax.sampling import guidance
  mult = guidance.branch_scales('harmonyview')
  args = (P.converted_params(), jnp.asarray(_lat(f['x_t'])), jnp.asarray(f['step_t']), _cond(), mult)
  shared = jax.jit(lambda *a: s.branch_eps(*a, share_volume=True))(*args)
  separate = jax.jit(lambda *a: s.branch_eps(*a, share_volume=False))(*args)
  _close(shared, separate, rel=1e-5)
