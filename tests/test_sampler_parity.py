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


def _close(got, ref, rel=1e-5, rtol=0., key=None):
  ref = np.asarray(ref)
  got = np.asarray(got)
  chex.assert_shape(got, ref.shape)
  atol = rel * max(1., float(np.abs(ref).max())) if ref.size else rel
  if key and ref.size:
    P.report(key, np.max(np.abs(got.astype(np.float64) - ref)), atol, rtol=rtol, scale=float(np.abs(ref).max()))
  chex.assert_trees_all_close(got, ref, atol=atol, rtol=rtol)


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
        _close(getattr(s, name), f[prefix + name], rel=1e-6, key=prefix + name)


def test_condition():
  """prepare(): CLIP embedding, posterior-sampled input latent (recorded noise), viewpoint embedding."""
  f = P.fixtures()
  s = _sampler('harmonyview')
  cond = jax.jit(s.condition)(P.converted_params(), jnp.asarray(f['input_image']), jnp.asarray(f['input_elevation']),
                              None, jnp.asarray(P.nhwc(f['vae_sample_noise'])))
  _close(cond.clip_embed, f['clip_embed'], key='condition.clip_embed')
  _close(cond.x_input, P.nhwc(f['x_input']), key='condition.x_input')
  _close(cond.v_embed, f['v_embed'], key='condition.v_embed')
  mode = Sampler(P.model_config(), SamplerConfig(steps=_steps(), latent='mode'))
  _close(jax.jit(mode.condition)(P.converted_params(), jnp.asarray(f['input_image']),
                                 jnp.asarray(f['input_elevation'])).x_input, P.nhwc(f['vae_mode_latent']),
         key='condition.vae_mode_latent')


@pytest.mark.parametrize('mode,key', [('harmonyview', 'ddim_step_out_dg'), ('cfg', 'ddim_step_out_cfg')])
def test_denoise_step(mode, key):
  """One full step from x_t: volumes, all guidance branches in one call, the guided eps and the DDIM update."""
  f = P.fixtures()
  s = _sampler(mode)
  out = jax.jit(s.denoise_step)(P.converted_params(), jnp.asarray(_lat(f['x_t'])), _cond(),
                                jnp.asarray(f['step_index']), _scales(mode), 1.0,
                                jnp.asarray(_lat(f['ddim_step_noise'])))
  _close(out, _lat(f[key]), rel=1e-3, rtol=1e-3, key=key)


def test_ddim_trajectory():
  """SyncDDIMSampler.sample with the recorded x_T and step noise: x after every step, x_0 and the decode."""
  f = P.fixtures()
  s = _sampler('harmonyview')
  run = jax.jit(lambda p, xT, z, sc: s.sample_latents(p, _cond(), xT, sc, 1.0, noises=z, return_intermediates=True))
  x0, inter = run(P.converted_params(), jnp.asarray(_lat(f['run_x_T'])), jnp.asarray(_lat(f['run_noises'])),
                  _scales('harmonyview'))
  for i in range(inter.shape[0]):
    _close(inter[i], _lat(f['run_x_inter'][i]), rel=1e-3, rtol=1e-3, key=f'run_x_inter[{i}]')
  _close(x0, _lat(f['run_x0']), rel=1e-3, rtol=1e-3, key='run_x0')
  decoded = jax.jit(s.decode)(P.converted_params(), jnp.asarray(_lat(f['run_x0'])))
  _close(decoded, np.moveaxis(f['run_decoded'], -3, -1), rel=1e-5, key='run_decoded')


def test_shared_volumes_equal_per_branch_volumes():
  """Building the volumes once for all branches equals rebuilding them in every branch."""
  f = P.fixtures()
  s = _sampler('harmonyview')
  from hv_jax.sampling import guidance
  mult = guidance.branch_scales('harmonyview')
  args = (P.converted_params(), jnp.asarray(_lat(f['x_t'])), jnp.asarray(f['step_t']), _cond(), mult)
  shared = jax.jit(lambda *a: s.branch_eps(*a, share_volume=True))(*args)
  separate = jax.jit(lambda *a: s.branch_eps(*a, share_volume=False))(*args)
  # both are float32 roundings of the same values, batched differently: the forward budget, plus twice the
  # original's own float32 spread on these branches where the set records it (an ill-conditioned branch
  # moves by that much under any change of summation order; test_model_parity.SPREAD_FACTOR)
  obs = P.config_json().get('observed_tolerances', {})
  spread = max(obs.get(f'{k}_f32_vs_f64_same_inputs', {}).get('max_abs', 0.0)
               for k in ('eps_cond', 'eps_uc1', 'eps_uc2'))
  ref = np.asarray(separate)
  atol = 1e-5 * max(1., float(np.abs(ref).max())) + 2.0 * spread
  P.report('branch_eps shared vs separate volumes', np.max(np.abs(np.asarray(shared) - ref)), atol)
  chex.assert_trees_all_close(np.asarray(shared), ref, atol=atol, rtol=0)
