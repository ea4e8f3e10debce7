"""Parity of the JAX NeuS renderer with HarmonyView's PyTorch NeuSRenderer (every neus_* fixture key).

The reference-size checkpoint `neus_ref.ckpt` is converted by convert/neus.py; every stage is fed the
fixture's own inputs for that stage (so an error shows where it arises), and the whole chain is run too.

Tolerances, each from an error analysis (fixture README "Tolerances" and the set's `observed_tolerances`):
- FORWARD, 1e-5 x max(1, max|ref|): single forward passes (fields, near/far, coarse depths, the SDF at the
  fixture's depths, render_core on the reference's own depths). The original re-run in float64 moves these
  by 7e-7 (sdf) and 2e-6 (gradient) at scales 1.2 and 2.2: ~1e-6 x scale, so 1e-5 leaves 10x for a port
  that sums in another order.
- Normals: render's normal is sum_s w_s g_s/|g_s|. If the gradient is off by dg (<= the gradient's FORWARD
  bound, checked on neus_gradient), g/|g| is off by at most 2|dg|/|g|: a sample whose gradient is short
  turns a tiny gradient error into a large normal error, whatever the size of the normal's component. So
  each ray's normal bound is FORWARD + sum_s w_s min(2, 2 eps_g/|g_s|), eps_g = FORWARD x max(1, max|g|).
- Depths through searchsorted (up-sampling output, sample_depth): atol 1e-4, with at most 1% of entries
  allowed beyond it, and none beyond a quarter of the coarse sample spacing. The inverse CDF is not
  continuous: where a bin's CDF step crosses 1e-5 the denominator switches to 1, so a float32 rounding
  difference can move a sample along its bin; the original itself, re-run in float64 on CPU, moves 33 of
  the 4096 depths of the bundled set by more than 1e-4 (max 7.6e-4); sets made by tools/make_parity_set.py
  record the same spread as `neus_z_vals_f32_vs_f64` / `neus_train_z_vals_f32_vs_f64`.
- The up-sampled chain (render and losses end to end, eval and train). The outputs are rendered at the
  depths the chain chose, so their error is (forward error) + (what the depth differences do). With the
  reference's own depths in the set (`neus_z_vals`; `neus_train_z_vals` in generated sets), each ray is
  held to FORWARD (normal: the normal bound) + |ours(our depths) - ours(reference depths)|, the second term
  rendered exactly; the depths themselves are held by the depth rule above and the rendering at the
  reference depths by FORWARD. A set without the train depths (the bundled one) gets the same budget with
  stand-ins for the reference's depths: the exact ones (our sampling in float64) and float32 ones from SDF
  weights moved by their own rounding size (`stand_in_depths`). Both float32 depth sets are roundings of
  the exact one, so |ours - ref| <= |ours - exact| + |exact - ref| ~ 2 max|ours - stand-in| per ray, on
  top of the README's 1e-4 single-forward bound for any ray. Never a constant loosened until it passes:
  rays whose depths agree get the forward bound, and only rays whose depths moved get more, by what the
  move does.
- inner_mask is a hard threshold |x_i| <= side_length: equal, except where the point's distance to the
  cube surface is within the difference between the two computations' points (+1e-6).
Run `pytest -s` to print the worst error of every key.
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity as P

pytestmark = pytest.mark.skipif(not (P.available() and (P.PARITY_DIR / 'neus_ref.ckpt').is_file()),
                                reason=f'no NeuS parity fixtures in {P.PARITY_DIR}')

from convert import neus as convert  # noqa: E402
from hv_jax.neus import fields  # noqa: E402
from hv_jax.neus import render as R  # noqa: E402

FORWARD, CHAIN = 1e-5, 1e-4
NORMAL_GAIN = 2.0     # |d(g/|g|)| <= 2 |dg| / |g|
EXACT_DEPTHS_FACTOR = 2.0   # |ours - ref| <= |ours - exact| + |exact - ref|, each ~ |ours - exact|
STAND_IN_PERTURBED = 3      # float32 depth sets with the SDF weights moved by their rounding size
Z_ATOL, Z_MAX_OUTLIER_FRAC, Z_CAP_FRAC_OF_SPACING = 1e-4, 0.01, 0.25
EDGE_SLACK = 1e-6

INPUT_KEYS = {'neus_points', 'neus_view_dirs', 'neus_rays_o', 'neus_rays_d', 'neus_target_rgb',
              'neus_target_mask', 'neus_train_rand_u', 'neus_train_step', 'neus_up_inv_s'}
OPTIONAL_KEYS = {'neus_train_z_vals'}   # generated sets (tools/make_parity_set.py): render(is_train=True)'s depths
LOSS_ORDER = ('total', 'eikonal', 'rendering', 'mask')   # neus_loss_* layout (fixture README)
# a small renderer for the chunking and training smoke tests (XLA compiles on CPU dominate their time)
TINY = fields.NeuSConfig(sdf=fields.SDFConfig(d_out=9, d_hidden=16, n_layers=2, skip_in=(1,), multires=1),
                         color=fields.ColorConfig(d_feature=8, d_hidden=8, n_layers=1, multires_view=1),
                         n_samples=8, n_importance=8, up_sample_steps=2)


def _f():
  return P.fixtures()


# The set's "neus" block also records the sizes of the set's own NeuS inputs (tools/make_parity_set.py): no
# renderer settings, so not NeuSConfig fields (the arrays carry their shapes). Any other key must be a field.
SET_SIZE_KEYS = ('n_points', 'n_rays', 'upsample_n_importance')


@functools.lru_cache(None)
def cfg() -> fields.NeuSConfig:
  return fields.NeuSConfig.from_dict({k: v for k, v in P.config_json()['neus'].items() if k not in SET_SIZE_KEYS})


@functools.lru_cache(None)
def torch_state_dict():
  torch = pytest.importorskip('torch', reason='reading neus_ref.ckpt needs torch')
  return torch.load(P.PARITY_DIR / 'neus_ref.ckpt', map_location='cpu', weights_only=True)['state_dict']


@functools.lru_cache(None)
def params():
  return jax.tree.map(jnp.asarray, convert.convert_state_dict(torch_state_dict(), cfg()))


def _err(got, ref) -> float:
  return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64)))) if np.size(ref) else 0.0


def check(key, got, rel, ref=None):
  """chex all-close at atol = rel x max(1, max|ref|), rtol 0; prints the worst error."""
  ref = _f()[key] if ref is None else ref
  got = np.asarray(got, np.float32).reshape(ref.shape)
  tol = P.tolerance(ref, rel)
  print(f'\n{key:34s} max|err| {_err(got, ref):.3e}  (atol {tol:.1e})', end='')
  P.report(key, _err(got, ref), tol)
  chex.assert_trees_all_close(got, np.asarray(ref, np.float32), atol=tol, rtol=0)


def check_depths(key, got, near, far, n_samples, ref=None):
  """Depths after searchsorted: <= 1% of entries beyond Z_ATOL, all within a quarter coarse spacing."""
  ref = _f()[key] if ref is None else ref
  got = np.asarray(got, np.float64).reshape(ref.shape)
  d = np.abs(got - ref)
  spacing = float(np.min(np.asarray(far) - np.asarray(near))) / (n_samples - 1)
  cap = Z_CAP_FRAC_OF_SPACING * spacing
  n_out = int(np.sum(d > Z_ATOL))
  print(f'\n{key:34s} max|err| {d.max():.3e}  ({n_out}/{d.size} beyond {Z_ATOL:g}; cap {cap:.1e})', end='')
  P.report(key, d.max(), cap, n_beyond=n_out, size=int(d.size), z_atol=Z_ATOL)
  assert n_out <= Z_MAX_OUTLIER_FRAC * d.size, (
      f'{key}: {n_out} of {d.size} depths differ by more than {Z_ATOL} (at most {Z_MAX_OUTLIER_FRAC:.0%} allowed): '
      f'{np.argwhere(d > Z_ATOL)[:20].tolist()}')
  chex.assert_trees_all_close(got, np.asarray(ref, np.float64), atol=cap, rtol=0)
  inliers = d <= Z_ATOL
  chex.assert_trees_all_close(got[inliers], ref[inliers], atol=Z_ATOL, rtol=0)


def _mid_points(rays_o, rays_d, z):
  z = np.asarray(z, np.float64)
  dists = np.diff(z, axis=-1)
  dists = np.concatenate([dists, dists[..., -1:]], -1)
  mid = z + dists * 0.5
  return rays_o[:, None, :].astype(np.float64) + rays_d[:, None, :].astype(np.float64) * mid[..., None]


def check_inner_mask(key, got, pts_ref, pts_got):
  """Equal except where the reference point is closer to the cube surface than the points differ (+slack)."""
  ref = _f()[key].astype(bool)
  got = np.asarray(got).astype(bool).reshape(ref.shape)
  edge = np.abs(np.max(np.abs(pts_ref), -1) - cfg().default_side_length)
  explained = edge <= np.max(np.abs(pts_got - pts_ref), -1) + EDGE_SLACK
  wrong = (got != ref) & ~explained
  print(f'\n{key:34s} {int(np.sum(got != ref))} of {ref.size} differ ({int(np.sum(wrong))} unexplained)', end='')
  assert not wrong.any(), f'{key}: inner_mask differs away from the cube edge at {np.argwhere(wrong)[:20].tolist()}'
  return got == ref


def _losses_vec(outputs):
  f = _f()
  loss, terms = R.losses(outputs, jnp.asarray(f['neus_target_rgb']), jnp.asarray(f['neus_target_mask']), cfg())
  terms = dict(terms, total=loss)
  return np.array([terms[k] for k in LOSS_ORDER], np.float32)


# ------------------------------------------------------------------------------------------ bookkeeping
def test_every_neus_key_is_checked():
  checked = {'neus_sdf_out', 'neus_gradient', 'neus_color_out', 'neus_variance', 'neus_inv_s', 'neus_near',
             'neus_far', 'neus_up_z_vals', 'neus_up_sdf', 'neus_up_out', 'neus_z_vals', 'neus_render_rgb',
             'neus_render_mask', 'neus_render_normal', 'neus_render_gradient_error', 'neus_render_inner_mask',
             'neus_loss_eval', 'neus_train_rgb', 'neus_train_mask', 'neus_loss_train'}
  keys = {k for k in _f() if k.startswith('neus_')}
  unchecked = keys - checked - INPUT_KEYS - OPTIONAL_KEYS
  assert unchecked == set(), f'unchecked fixture keys: {sorted(unchecked)}'
  assert checked - keys == set(), f'fixture keys missing from the set: {sorted(checked - keys)}'


def test_config_matches_fixture_set():
  f, c, js = _f(), cfg(), P.config_json()
  assert int(f['neus_train_step']) == int(js.get('neus_train_step', f['neus_train_step']))
  assert float(f['neus_up_inv_s'].reshape(-1)[0]) == 64.0          # first up-sampling round, 64 * 2**0
  assert f['neus_z_vals'].shape[-1] == c.n_samples + c.n_importance
  assert f['neus_up_z_vals'].shape[-1] == c.n_samples
  assert f['neus_sdf_out'].shape[-1] == c.sdf.d_out
  assert f['neus_loss_eval'].shape == (4,) and c.lambda_mask_loss > 0 and c.use_mask


# -------------------------------------------------------------------------------------------- converter
def test_convert_round_trip_and_errors():
  sd = torch_state_dict()
  p = convert.convert_state_dict(sd, cfg())
  back = convert.to_state_dict(p, cfg())
  assert set(back) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)
  leaves = jax.tree_util.tree_leaves(p)
  assert sum(np.size(a) for a in leaves) == sum(v.numel() for v in sd.values())
  # the JAX geometric init builds the same tree
  init = fields.init_params(jax.random.key(0), cfg())
  chex.assert_trees_all_equal_shapes_and_dtypes(init, jax.tree.map(jnp.asarray, p))

  extra = dict(sd)
  extra['renderer.sdf_network.lin9.bias'] = sd['renderer.sdf_network.lin0.bias']
  with pytest.raises(convert.ConversionError, match=r'unexpected key: renderer\.sdf_network\.lin9\.bias'):
    convert.convert_state_dict(extra, cfg())
  missing = {k: v for k, v in sd.items() if k != 'renderer.color_network.lin2.weight_g'}
  with pytest.raises(convert.ConversionError, match=r'missing key: renderer\.color_network\.lin2\.weight_g'):
    convert.convert_state_dict(missing, cfg())
  bad = dict(sd)
  bad['renderer.sdf_network.lin3.weight_v'] = sd['renderer.sdf_network.lin2.weight_v']
  with pytest.raises(convert.ConversionError, match=r'mis-shaped key: renderer\.sdf_network\.lin3\.weight_v'):
    convert.convert_state_dict(bad, cfg())
  with pytest.raises(convert.ConversionError, match='unexpected key: sdf_network'):
    convert.convert_state_dict({k[len('renderer.'):]: v for k, v in sd.items()}, cfg())


# ----------------------------------------------------------------------------------------------- fields
def test_sdf_network():
  f, p = _f(), params()
  out, grad = jax.jit(lambda p, x: fields.sdf_and_gradient(p, x, cfg().sdf))(p['sdf'], f['neus_points'])
  check('neus_sdf_out', out, FORWARD)
  check('neus_gradient', grad, FORWARD)
  # SDFNetwork.sdf (only column 0 of the last layer) agrees with the full forward
  s = jax.jit(lambda p, x: fields.sdf(p, x, cfg().sdf))(p['sdf'], f['neus_points'])
  check('neus_sdf_out', s, FORWARD, ref=f['neus_sdf_out'][:, 0])


def test_color_network():
  f = _f()
  c = jax.jit(lambda p, *a: fields.color_forward(p, *a, cfg().color))(
      params()['color'], f['neus_points'], f['neus_gradient'], f['neus_view_dirs'], f['neus_sdf_out'][:, 1:])
  check('neus_color_out', c, FORWARD)


def test_variance():
  v = params()['variance']
  check('neus_variance', np.reshape(v, (1,)), FORWARD)
  check('neus_inv_s', np.reshape(fields.inv_s(v), (1,)), FORWARD)


# ---------------------------------------------------------------------------------------------- sampling
def test_near_far_and_coarse_depths():
  f, c = _f(), cfg()
  near, far = R.near_far_from_sphere(jnp.asarray(f['neus_rays_o']), jnp.asarray(f['neus_rays_d']), c.default_radius)
  check('neus_near', near, FORWARD)
  check('neus_far', far, FORWARD)
  check('neus_up_z_vals', R.coarse_z_vals(jnp.asarray(f['neus_near']), jnp.asarray(f['neus_far']), c.n_samples),
        FORWARD)
  pts = f['neus_rays_o'][:, None, :] + f['neus_rays_d'][:, None, :] * f['neus_up_z_vals'][..., None]
  check('neus_up_sdf', jax.jit(lambda p, x: fields.sdf(p, x, c.sdf))(params()['sdf'], pts), FORWARD)


def test_upsample():
  f, c = _f(), cfg()
  n_imp = f['neus_up_out'].shape[-1]
  up = jax.jit(lambda *a: R.upsample(*a, n_imp, float(f['neus_up_inv_s'].reshape(-1)[0]), c.default_side_length))(
      f['neus_rays_o'], f['neus_rays_d'], f['neus_up_z_vals'], f['neus_up_sdf'])
  check_depths('neus_up_out', up, f['neus_near'], f['neus_far'], c.n_samples)


@functools.lru_cache(None)
def eval_render():
  f = _f()
  return R.render_jit(params(), jnp.asarray(f['neus_rays_o']), jnp.asarray(f['neus_rays_d']), cfg(), is_train=False)


@functools.lru_cache(None)
def train_render():
  f = _f()
  return R.render_jit(params(), jnp.asarray(f['neus_rays_o']), jnp.asarray(f['neus_rays_d']), cfg(), is_train=True,
                      step=jnp.asarray(f['neus_train_step']), perturb_u=jnp.asarray(f['neus_train_rand_u']))


def render_at(z_vals, is_train: bool):
  """Our render on given depths (render_core; training mode anneals cos at the recorded step)."""
  f = _f()
  return R.render_jit(params(), jnp.asarray(f['neus_rays_o']), jnp.asarray(f['neus_rays_d']), cfg(),
                      is_train=is_train, step=jnp.asarray(f['neus_train_step']),
                      z_vals=jnp.asarray(z_vals, jnp.float32))


def reference_depths(is_train: bool):
  """The depths the reference rendered at, when the set records them (None: not recorded)."""
  return _f().get('neus_train_z_vals' if is_train else 'neus_z_vals')


@functools.lru_cache(None)
def stand_in_depths(is_train: bool):
  """Depth sets the reference's float32 depths are one more rounding of: our sampling in float64 (the exact
  depths to ~1e-12) and in float32 with every SDF weight moved by a relative 1e-6 (the size of the SDF's
  own float32 rounding, 6.6e-7 at 1.2 in observed_tolerances), i.e. other float32 orders of the same sums.
  Where a sample sits at a discontinuity of the inverse CDF, these land on both sides of it."""
  f, c = _f(), cfg()
  rays = [f['neus_rays_o'], f['neus_rays_d'], f['neus_train_rand_u'] if is_train else None]
  fn = jax.jit(R.depths, static_argnames=('cfg', 'is_train'))
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params())
    a64 = [None if a is None else jnp.asarray(np.asarray(a, np.float64)) for a in rays]
    out = [np.asarray(fn(p64, a64[0], a64[1], c, is_train=is_train, perturb_u=a64[2]), np.float32)]
  leaves, tree = jax.tree_util.tree_flatten(params())
  for seed in range(STAND_IN_PERTURBED):
    rng = np.random.default_rng(seed)
    moved = [jnp.asarray(np.asarray(a) * (1 + 1e-6 * rng.choice([-1., 1.], np.shape(a))), jnp.float32)
             for a in leaves]
    z = fn(jax.tree_util.tree_unflatten(tree, moved), *[None if a is None else jnp.asarray(a) for a in rays[:2]],
           c, is_train=is_train, perturb_u=None if rays[2] is None else jnp.asarray(rays[2]))
    out.append(np.asarray(z))
  return out


def normal_bound(z_vals, weights) -> np.ndarray:
  """[R, 1] bound on render's normal from the gradient's FORWARD bound (module docstring, "Normals")."""
  f, c = _f(), cfg()
  z = jnp.asarray(z_vals, jnp.float32)
  dists = jnp.concatenate([z[:, 1:] - z[:, :-1], z[:, -1:] - z[:, -2:-1]], -1)
  pts = jnp.asarray(f['neus_rays_o'])[:, None] + jnp.asarray(f['neus_rays_d'])[:, None] * (z + dists * 0.5)[..., None]
  _, g = jax.jit(lambda p, x: fields.sdf_and_gradient(p, x, c.sdf))(params()['sdf'], pts)
  g = np.asarray(g, np.float64)
  gn = np.linalg.norm(g, axis=-1)
  eps_g = P.tolerance(f['neus_gradient'], FORWARD)   # the bound neus_gradient is held to
  per_sample = np.minimum(NORMAL_GAIN, NORMAL_GAIN * eps_g / np.maximum(gn, 1e-30))
  return FORWARD + np.sum(np.asarray(weights, np.float64) * per_sample, -1, keepdims=True)


def check_per_ray(key, got, ref, atol):
  """|got - ref| <= atol per ray (atol [R, 1] or scalar), rtol 0; prints the worst error and its bound."""
  got = np.asarray(got, np.float64).reshape(ref.shape)
  err = np.abs(got - np.asarray(ref, np.float64))
  atol = np.broadcast_to(np.asarray(atol, np.float64), err.shape[:1] + (1,) * (err.ndim - 1)) \
      if np.ndim(atol) else np.full(err.shape[:1] + (1,) * (err.ndim - 1), float(atol))
  ratio = err / atol
  i = np.unravel_index(np.argmax(ratio), ratio.shape)
  print(f'\n{key:34s} max|err| {err.max():.3e}  (worst vs its bound: {err[i]:.3e} / {atol[i[0]].item():.1e})', end='')
  P.report(key, err.max(), atol[i[0]].item(), worst_ratio=float(ratio.max()), bound='per ray')
  bad = np.argwhere(ratio > 1)
  assert not bad.size, (f'{key}: {len(bad)} values beyond their bound, first {bad[:10].tolist()}: '
                        f'err {err[tuple(bad[0])]:.3e} > {atol[bad[0][0]].item():.3e}')


def _ray_max(a):
  a = np.abs(np.asarray(a, np.float64))
  return a.reshape(a.shape[0], -1).max(-1, keepdims=True)


def check_chain(key_prefix, out, is_train):
  """The end-to-end outputs (`out`, rendered at our depths) against the fixtures, each ray held to the
  budget of the module docstring: forward bound + what our depths do that the reference's did not."""
  f = _f()
  z_ref = reference_depths(is_train)
  stand_in = z_ref is None
  ats = [render_at(z, is_train) for z in (stand_in_depths(is_train) if stand_in else [z_ref])]
  keys = ('rgb', 'mask', 'normal') if not is_train else ('rgb', 'mask')
  for k in keys:
    key = f'{key_prefix}_{k}'
    ref = f[key]
    at = ats[0]
    base = normal_bound(np.asarray(at['z_vals']), np.asarray(at['weights'])) if k == 'normal' \
        else P.tolerance(ref, FORWARD)
    moved = np.max([_ray_max(np.asarray(out[k]) - np.asarray(a[k])) for a in ats], 0)
    atol = (np.maximum(base, P.tolerance(ref, CHAIN)) + EXACT_DEPTHS_FACTOR * moved) if stand_in else base + moved
    check_per_ray(key + (' (stand-in depths)' if stand_in else ''), out[k], ref, atol)
  loss_key = 'neus_loss_train' if is_train else 'neus_loss_eval'
  got = _losses_vec(out)
  ref = f[loss_key]
  moved = np.max([np.abs(got.astype(np.float64) - _losses_vec(a)) for a in ats], 0)
  tol = P.tolerance(ref, CHAIN if stand_in else FORWARD) + (EXACT_DEPTHS_FACTOR if stand_in else 1.0) * moved
  err = np.abs(got - ref)
  P.report(loss_key + ' (chain)', err.max(), float(tol[np.argmax(err / tol)]), worst_ratio=float(np.max(err / tol)))
  print(f'\n{loss_key:34s} max|err| {err.max():.3e}  (bounds {" ".join(f"{t:.1e}" for t in tol)})', end='')
  assert np.all(err <= tol), f'{loss_key}: {err} beyond {tol}'


def test_sample_depth():
  """sample_depth without perturbation, as render(is_train=False) calls it (render returns its z_vals)."""
  f = _f()
  check_depths('neus_z_vals', eval_render()['z_vals'], f['neus_near'], f['neus_far'], cfg().n_samples)


def test_sample_depth_train():
  """sample_depth with the recorded perturbation (the depths render(is_train=True) integrates over)."""
  f = _f()
  if reference_depths(True) is None:
    pytest.skip('this set does not record neus_train_z_vals')
  check_depths('neus_train_z_vals', train_render()['z_vals'], f['neus_near'], f['neus_far'], cfg().n_samples)


# ------------------------------------------------------------------------------------------- rendering
def test_render_core_on_reference_depths():
  """render(is_train=False) = render_core(sample_depth(...)); fed the fixture's depths, each output is a
  single forward pass (tight tolerance; normals by the normal bound)."""
  f, c = _f(), cfg()
  out = jax.jit(lambda p, *a: R.render_core(p, *a, c))(params(), f['neus_rays_o'], f['neus_rays_d'], f['neus_z_vals'])
  for k in ('rgb', 'mask', 'gradient_error'):
    check(f'neus_render_{k}', out[k], FORWARD)
  check_per_ray('neus_render_normal', out['normal'], f['neus_render_normal'],
                normal_bound(f['neus_z_vals'], out['weights']))
  pts = _mid_points(f['neus_rays_o'], f['neus_rays_d'], f['neus_z_vals'])
  check_inner_mask('neus_render_inner_mask', out['inner_mask'], pts, pts)
  check('neus_loss_eval', _losses_vec(out), FORWARD)


def test_render_train_on_reference_depths():
  """render(is_train=True) on the reference's own training depths: a single forward pass (needs a set that
  records neus_train_z_vals)."""
  z = reference_depths(True)
  if z is None:
    pytest.skip('this set does not record neus_train_z_vals')
  out = render_at(z, True)
  check('neus_train_rgb', out['rgb'], FORWARD)
  check('neus_train_mask', out['mask'], FORWARD)
  check('neus_loss_train', _losses_vec(out), FORWARD)


def test_render_eval_end_to_end():
  f = _f()
  out = eval_render()
  check_chain('neus_render', out, is_train=False)
  z = np.asarray(out['z_vals'])
  pts_ref = _mid_points(f['neus_rays_o'], f['neus_rays_d'], f['neus_z_vals'])
  pts_got = _mid_points(f['neus_rays_o'], f['neus_rays_d'], z)
  same = check_inner_mask('neus_render_inner_mask', out['inner_mask'], pts_ref, pts_got)
  # gradient_error per sample: where the section mid-point is the reference's (to 1e-6) it must agree; the
  # SDF gradient of this random field changes by up to ~1e4 per unit depth, so samples that moved more are
  # covered by test_render_core_on_reference_depths and by the eikonal term of neus_loss_eval. (How many
  # moved is not a criterion: 1e-6 is 4 ulps of a depth of 2, and test_sample_depth bounds the depths.)
  moved = np.max(np.abs(pts_got - pts_ref), -1) > 1e-6
  keep = same & ~moved
  ref = f['neus_render_gradient_error']
  ge = np.asarray(out['gradient_error'])
  print(f'\nneus_render_gradient_error (chain, {keep.sum()}/{keep.size} unmoved) max|err| {_err(ge[keep], ref[keep]):.3e}',
        end='')
  P.report('neus_render_gradient_error (chain, unmoved)', _err(ge[keep], ref[keep]), P.tolerance(ref, CHAIN))
  chex.assert_trees_all_close(ge[keep], ref[keep], atol=P.tolerance(ref, CHAIN), rtol=0)


def test_render_train_and_losses():
  """render_with_loss(is_train=True) at the recorded step with the recorded perturbation draw."""
  f, c = _f(), cfg()
  batch = {'rays_o': f['neus_rays_o'], 'rays_d': f['neus_rays_d'], 'rgb': f['neus_target_rgb'],
           'mask': f['neus_target_mask']}
  fn = jax.jit(R.render_with_loss, static_argnames=('cfg', 'is_train'))
  loss, terms, out = fn(params(), batch, c, is_train=True, step=jnp.asarray(f['neus_train_step']),
                        perturb_u=f['neus_train_rand_u'])
  check_chain('neus_train', out, is_train=True)
  terms = dict(terms, total=loss)   # render_with_loss's own loss terms equal the stand-alone `losses`
  np.testing.assert_allclose(np.array([terms[k] for k in LOSS_ORDER], np.float32), _losses_vec(out), rtol=1e-6,
                             atol=1e-7)


def test_render_chunked_matches_render():
  """Chunking (BaseRenderer.render) changes nothing but rounding; small config and fresh weights."""
  c = TINY
  p = fields.init_params(jax.random.key(0), c)
  f = _f()
  o, d = jnp.asarray(f['neus_rays_o']), jnp.asarray(f['neus_rays_d'])
  full = R.render_jit(p, o, d, c)
  chunked = R.render_chunked(p, o, d, c, chunk=o.shape[0] // 2)
  for k in ('rgb', 'mask', 'normal', 'z_vals'):   # float rounding only: XLA vectorises each batch size differently
    chex.assert_trees_all_close(chunked[k], full[k], atol=1e-5, rtol=0)


# -------------------------------------------------------------------------------------------------- init
def test_geometric_init():
  """SDFNetwork's geometric init: a roughly spherical SDF, negative inside, |grad| ~ 1.

  It is not exactly |x| - bias (softplus(beta=100), skip layer). The original at reference sizes, averaged
  over 6 torch seeds and 256 directions, gives mean sdf -0.211 / -0.140 / +0.036 / +0.250 at radii
  0 / .25 / .5 / .75 (seed-to-seed std 0.011 .. 0.038) and mean |grad sdf| 0.83 at radius .5."""
  c = cfg()
  radii = np.array([0.0, 0.25, 0.5, 0.75], np.float32)
  torch_mean_sdf, torch_grad = np.array([-0.211, -0.140, 0.036, 0.250]), 0.83
  fn = jax.jit(lambda p, x: fields.sdf_and_gradient(p, x, c.sdf))
  sdfs, grads = [], []
  for seed in range(4):
    p = fields.init_params(jax.random.key(seed), c)
    dirs = np.array(jax.random.normal(jax.random.key(100 + seed), (256, 3)))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    s, g = fn(p['sdf'], jnp.asarray(radii[:, None, None] * dirs[None]))
    sdfs.append(np.asarray(s[..., 0]).mean(-1))
    grads.append(np.linalg.norm(np.asarray(g[2]), axis=-1).mean())
  np.testing.assert_allclose(np.mean(sdfs, 0), torch_mean_sdf, atol=0.05)
  np.testing.assert_allclose(np.mean(grads), torch_grad, atol=0.05)
  lin0 = p['sdf']['lin0']
  assert np.all(np.asarray(lin0['v'])[3:] == 0) and np.all(np.asarray(lin0['bias']) == 0)
  skip = c.sdf.skip_in[0]
  assert np.all(np.asarray(p['sdf'][f'lin{skip}']['v'])[-(c.sdf.input_ch - 3):] == 0)
  np.testing.assert_allclose(np.asarray(p['variance']), c.variance_init)
  for net in ('sdf', 'color'):   # weight_norm at construction keeps w: g = ||v|| per output unit
    for lp in p[net].values():
      np.testing.assert_allclose(np.asarray(lp['g']), np.linalg.norm(np.asarray(lp['v']), axis=0), rtol=1e-6)


# ------------------------------------------------------------------------------------------------ train
def test_lr_schedule_matches_original():
  from hv_jax.neus import train
  # schedule_fn of RendererTrainer.configure_optimizers with total 2000, warm-up 100 (configs/neus.yaml)
  ratio = 0.02 ** (1 / 2)
  want = {0: 0.02, 50: 0.5 * 0.98 + 0.02, 99: 0.99 * 0.98 + 0.02, 100: 1.0, 999: 1.0, 1000: ratio, 1999: ratio}
  for step, v in want.items():
    np.testing.assert_allclose(float(train.lr_factor(step, 2000, 100)), v, rtol=1e-6, err_msg=str(step))
  with pytest.raises(ValueError, match='total_steps'):
    train.lr_factor(0, 500, 100)


def test_adamw_matches_torch():
  """optax.adamw as configured == torch.optim.AdamW + LambdaLR(schedule_fn), a few steps on a quadratic."""
  torch = pytest.importorskip('torch')
  from hv_jax.neus import train
  tc = train.TrainConfig(total_steps=2000, warm_up_steps=3)
  x0 = np.linspace(-1, 1, 7).astype(np.float32)
  c = np.linspace(0.5, 2, 7).astype(np.float32)
  tp = torch.nn.Parameter(torch.from_numpy(x0.copy()))
  opt = torch.optim.AdamW([tp], lr=tc.base_lr)
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda s: float(train.lr_factor(s, tc.total_steps, tc.warm_up_steps)))
  jopt = train.make_optimizer(tc)
  jp = jnp.asarray(x0)
  state = jopt.init(jp)
  for _ in range(6):
    opt.zero_grad()
    (torch.from_numpy(c) * tp ** 2).sum().backward()
    opt.step()
    sched.step()
    g = jax.grad(lambda p: jnp.sum(c * p ** 2))(jp)
    upd, state = jopt.update(g, state, jp)
    jp = jp + upd
  np.testing.assert_allclose(np.asarray(jp), tp.detach().numpy(), rtol=0, atol=1e-7)
  assert np.abs(np.asarray(jp) - x0).max() > 1e-4


def test_train_step_smoke():
  """A couple of jitted AdamW steps on a tiny config: finite loss and gradients, parameters move."""
  from hv_jax.neus import train
  c = TINY
  tc = train.TrainConfig(total_steps=2000, warm_up_steps=10)
  f = _f()
  batch = {'rays_o': jnp.asarray(f['neus_rays_o']), 'rays_d': jnp.asarray(f['neus_rays_d']),
           'rgb': jnp.asarray(f['neus_target_rgb']), 'mask': jnp.asarray(f['neus_target_mask'])}
  p0 = fields.init_params(jax.random.key(0), c)
  state = train.init_state(jax.tree.map(jnp.copy, p0), tc)
  for i in range(2):
    state, m = train.train_step(state, batch, jax.random.key(10 + i), cfg=c, tc=tc)
    m = jax.device_get(m)
    assert all(np.isfinite(v) for v in m.values()), m
    np.testing.assert_allclose(m['lr'], tc.base_lr * (0.02 + i / 10 * 0.98), rtol=1e-6)
    assert set(m) >= {'loss', 'eikonal', 'rendering', 'mask', 'grad_norm'} and m['grad_norm'] > 0
  assert int(state.step) == 2
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params, p0)
  assert all(v > 0 for v in jax.tree_util.tree_leaves(moved)), moved
