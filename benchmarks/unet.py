"""Full-size DepthWiseAttention UNet on one HarmonyView step (16 views x 3 guidance branches = 48 rows).

Random weights (just the UNet's params, initialised under jit), float32 inputs of the real shapes:
x [B, 32, 32, 8], timesteps [B], context [B, 1, 768], frustum volumes [B, 48, 32, 32, 64] ...
[B, 6, 4, 4, 512]. Reports compile time, steady-state seconds (best / median of --repeats), model FLOPs
(XLA's cost analysis and an exact count of the dot/conv FLOPs in the jaxpr), the achieved FLOP/s as a
fraction of a float32 `jnp.matmul` measured in the same run (before and after the UNet, best of
several), and peak memory (process ru_maxrss; XLA's temp buffer size for the compiled forward).

  PYTHONPATH=. python benchmarks/unet.py                 # 48 rows, float32 (~5 min on 2 cores)
  PYTHONPATH=. python benchmarks/unet.py --batch 6       # quick
  PYTHONPATH=. python benchmarks/unet.py --torch         # also the original PyTorch UNet (needs einops
                                                         # and the original repo at --torch-ref)
  PYTHONPATH=. python benchmarks/unet.py --conv-impl xla # 3x3 convs via XLA's convolution (baseline)

XLA flags must be set before JAX starts: use --xla-flags (appended to $XLA_FLAGS).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batch', type=int, default=48, help='UNet rows (48 = 16 views x 3 guidance branches)')
  p.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32', help='UNet compute dtype')
  p.add_argument('--remat', action='store_true', help='rematerialised blocks (no effect on a forward)')
  p.add_argument('--chunks', type=int, default=0,
                 help='rows per chunk: run the UNet over the batch with lax.map in chunks of this many rows '
                      '(0 = the whole batch in one call)')
  p.add_argument('--conv-impl', default=None,
                 help='3x3 conv lowering for hv_jax.models.layers.CONV_IMPL (default: the module default)')
  p.add_argument('--repeats', type=int, default=3, help='steady-state forward calls timed')
  p.add_argument('--matmul-size', type=int, default=2048, help='square float32 matmul for the in-run peak')
  p.add_argument('--matmul-repeats', type=int, default=5)
  p.add_argument('--xla-flags', default='', help='appended to XLA_FLAGS before JAX starts')
  p.add_argument('--torch', action='store_true', help='also time the original PyTorch UNet, same shapes')
  p.add_argument('--torch-ref', default='/tmp/ref', help='checkout of the original code (ldm/ package)')
  p.add_argument('--torch-repeats', type=int, default=1)
  p.add_argument('--seed', type=int, default=0)
  return p.parse_args(argv)


ARGS = parse_args() if __name__ == '__main__' else None
if ARGS is not None and ARGS.xla_flags:
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + ARGS.xla_flags).strip()

import jax  # noqa: E402
import jax.extend  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hv_jax.models import layers  # noqa: E402
from hv_jax.models.config import ModelConfig  # noqa: E402
from hv_jax.models.unet import DepthWiseAttentionUNet  # noqa: E402


def rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


def timed(fn, repeats):
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t0)
  return ts


def matmul_peak(n, repeats):
  """Best float32 n x n x n matmul rate in GFLOP/s (one warm-up call)."""
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  jax.block_until_ready(f(a, b))
  return 2 * n ** 3 / min(timed(lambda: f(a, b), repeats)) / 1e9


def jaxpr_flops(jaxpr) -> float:
  """Exact multiply-add FLOPs (2 per MAC) of every dot_general and conv_general_dilated in a jaxpr."""
  total = 0.
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (lc, rc), (lb, _) = eqn.params['dimension_numbers']
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      out = eqn.outvars[0].aval.shape
      total += 2. * np.prod(out) * np.prod([lhs[i] for i in lc])
    elif name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      out = eqn.outvars[0].aval.shape
      dn = eqn.params['dimension_numbers']
      kspatial = [rhs[i] for i in dn.rhs_spec[2:]]
      cin = rhs[dn.rhs_spec[1]]
      total += 2. * np.prod(out) * cin * np.prod(kspatial) / eqn.params['feature_group_count']
    mult = eqn.params.get('length', 1) if name == 'scan' else 1
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else (v,)):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += mult * jaxpr_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += mult * jaxpr_flops(sub)
  return total


def unet_inputs(cfg: ModelConfig, batch: int, seed: int):
  u, v = cfg.unet, cfg.volume
  h = cfg.latent_size
  ks = jax.random.split(jax.random.key(seed), 8)
  x = jax.random.normal(ks[0], (batch, h, h, u.in_channels), jnp.float32)
  t = jax.random.randint(ks[1], (batch,), 0, 1000).astype(jnp.float32)
  ctx = jax.random.normal(ks[2], (batch, 1, u.context_dim), jnp.float32)
  vols = tuple(jax.random.normal(ks[3 + i], (batch, v.frustum_volume_depth // 2 ** i, h // 2 ** i, h // 2 ** i, d),
                                 jnp.float32) for i, d in enumerate(u.volume_dims))
  return x, t, ctx, vols


def random_params(model, inputs, seed: int):
  """The UNet's param tree (shapes from jax.eval_shape of its init) filled with cheap random values.

  Kernels ~ N(0, 1/fan_in) (fan_in = all but the last axis, as Flax's lecun_normal), norm scales 1,
  biases 0. A jitted `model.init` would do the same job but costs ~2 min of compile + RNG here.
  """
  shapes = jax.eval_shape(lambda k: model.init(k, *inputs), jax.random.key(0))['params']
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], 'key', str(path[-1]))
    if name == 'scale':
      return jnp.ones(leaf.shape, leaf.dtype)
    if name == 'bias':
      return jnp.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    w = rng.standard_normal(leaf.shape, dtype=np.float32)
    w *= np.float32(fan_in ** -0.5)
    return jnp.asarray(w, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


# ------------------------------------------------------------------------------------------- torch
def torch_unet(ref: str, cfg: ModelConfig):
  """The original DepthWiseAttention(UNetModel) with configs/syncdreamer.yaml's UNet settings."""
  import types
  sys.path.insert(0, ref)
  # ldm/util.py pulls torchvision/cv2/matplotlib; the UNet only needs `exists` from it.
  stub = types.ModuleType('ldm.util')
  stub.exists = lambda x: x is not None
  stub.instantiate_from_config = None
  sys.modules['ldm.util'] = stub
  if 'omegaconf' not in sys.modules:  # only `omegaconf.listconfig.ListConfig` is looked at (a type test)
    oc, lc = types.ModuleType('omegaconf'), types.ModuleType('omegaconf.listconfig')
    lc.ListConfig = type('ListConfig', (), {})
    oc.listconfig = lc
    sys.modules.update({'omegaconf': oc, 'omegaconf.listconfig': lc})
  from ldm.models.diffusion.sync_dreamer_attention import DepthWiseAttention
  u = cfg.unet
  return DepthWiseAttention(
      volume_dims=list(u.volume_dims), image_size=cfg.latent_size, in_channels=u.in_channels,
      out_channels=u.out_channels, model_channels=u.model_channels,
      attention_resolutions=list(u.attention_resolutions), num_res_blocks=u.num_res_blocks,
      channel_mult=list(u.channel_mult), num_heads=u.num_heads, use_spatial_transformer=True,
      transformer_depth=u.transformer_depth, context_dim=u.context_dim, use_checkpoint=True,
      legacy=False).eval()


def run_torch(args, cfg, inputs):
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  model = torch_unet(args.torch_ref, cfg)
  x, t, ctx = (np.asarray(a) for a in inputs[:3])
  vols = tuple(np.asarray(v) for v in inputs[3])
  tx = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
  tt = torch.from_numpy(t)
  tc = torch.from_numpy(ctx)
  src = {v.shape[3]: torch.from_numpy(np.ascontiguousarray(np.moveaxis(v, -1, 1))) for v in vols}
  del vols
  with torch.no_grad():
    run = lambda: model(tx, tt, tc, source_dict=src)
    ts = []
    for _ in range(args.torch_repeats):
      t0 = time.perf_counter()
      run()
      ts.append(time.perf_counter() - t0)
  return ts


# ------------------------------------------------------------------------------------------- main
def main(args):
  if args.conv_impl is not None:
    layers.CONV_IMPL = args.conv_impl
  cfg = ModelConfig.full()
  dtype = jnp.bfloat16 if args.dtype == 'bfloat16' else jnp.float32
  model = DepthWiseAttentionUNet(cfg.unet, dtype, args.remat)
  print(f'jax {jax.__version__} {jax.devices()[0].platform}, {os.cpu_count()} cpus, batch {args.batch}, '
        f'dtype {args.dtype}, conv_impl {getattr(layers, "CONV_IMPL", "xla")}, chunks {args.chunks or "-"}, '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}', flush=True)

  inputs = unet_inputs(cfg, args.batch, args.seed)
  t0 = time.perf_counter()
  one = jax.tree.map(lambda a: a[:1], inputs)
  params = random_params(model, one, args.seed)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  print(f'init: {n_params / 1e6:.1f}M params in {time.perf_counter() - t0:.1f} s', flush=True)

  def forward(p, x, t, ctx, vols):
    if not args.chunks or args.chunks >= x.shape[0]:
      return model.apply({'params': p}, x, t, ctx, vols)
    if x.shape[0] % args.chunks:
      raise SystemExit(f'--chunks {args.chunks} does not divide --batch {x.shape[0]}')
    split = lambda a: a.reshape((-1, args.chunks) + a.shape[1:])
    out = jax.lax.map(lambda xs: model.apply({'params': p}, *xs), jax.tree.map(split, (x, t, ctx, vols)))
    return out.reshape((-1,) + out.shape[2:])

  peak_before = matmul_peak(args.matmul_size, args.matmul_repeats)

  fn = jax.jit(forward)
  t0 = time.perf_counter()
  lowered = fn.lower(params, *inputs)
  compiled = lowered.compile()
  t_compile = time.perf_counter() - t0
  flops_exact = jaxpr_flops(jax.make_jaxpr(forward)(params, *inputs).jaxpr)
  try:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    flops_xla = float(ca.get('flops', float('nan')))
  except Exception:  # noqa: BLE001
    flops_xla = float('nan')
  try:
    ma = compiled.memory_analysis()
    temp_gib = ma.temp_size_in_bytes / 2 ** 30
  except Exception:  # noqa: BLE001
    temp_gib = float('nan')

  t0 = time.perf_counter()
  out = jax.block_until_ready(compiled(params, *inputs))
  t_first = time.perf_counter() - t0
  if not np.isfinite(np.asarray(out)).all():
    raise SystemExit('non-finite UNet output')
  ts = timed(lambda: compiled(params, *inputs), args.repeats)
  peak_after = matmul_peak(args.matmul_size, args.matmul_repeats)
  peak = max(peak_before, peak_after)
  best, med = min(ts), statistics.median(ts)

  rows = [('jax UNet', best, med, flops_exact)]
  if args.torch:
    tts = run_torch(args, cfg, inputs)
    rows.append(('torch UNet (original)', min(tts), statistics.median(tts), flops_exact))

  print()
  print(f'compile {t_compile:.1f} s, first call {t_first:.1f} s; steady-state times {["%.2f" % s for s in ts]}')
  print(f'model FLOPs: {flops_exact / 1e12:.3f} T (dot+conv count), XLA cost analysis {flops_xla / 1e12:.3f} T')
  print(f'matmul peak ({args.matmul_size}^3 float32): {peak_before:.1f} GFLOP/s before, {peak_after:.1f} after')
  print(f'peak RSS {rss_gib():.2f} GiB; XLA temp buffers {temp_gib:.2f} GiB')
  print()
  print(f'{"":24s} {"best s":>8s} {"median s":>9s} {"TFLOP":>7s} {"GFLOP/s":>8s} {"peak GF/s":>9s} '
        f'{"fraction":>8s}')
  for name, b, m, fl in rows:
    rate = fl / b / 1e9
    print(f'{name:24s} {b:8.2f} {m:9.2f} {fl / 1e12:7.3f} {rate:8.1f} {peak:9.1f} {rate / peak:8.3f}')


if __name__ == '__main__':
  main(ARGS)
