"""Full-size DepthWiseAttention UNet on one HarmonyView step (16 views x 3 guidance branches = 48 rows),
per lowering (hv_jax.models.config.Lowering: ModelConfig.conv_impl / attn_impl).

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
  PYTHONPATH=. python benchmarks/unet.py --compare      # fast and reference lowering, alternated
  PYTHONPATH=. python benchmarks/unet.py --impl all --models full,tiny --batch 12 --repeats 10 \
      --matmul-size 8192                                  # choosing the GPU default (docs/speed.md)

XLA flags must be set before JAX starts: use --xla-flags (appended to $XLA_FLAGS).
"""
from __future__ import annotations

import argparse
import concurrent.futures
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
  p.add_argument('--impl', default='fast',
                 help='comma-separated lowerings: fast = conv_impl "tuned" + attn_impl "fast" (the CPU default); '
                      'reference = "xla" + "reference" (the literal formulation); xla_fast, tuned_reference (the '
                      'mixed ones); auto = what ModelConfig\'s "auto" resolves to on this backend; all = fast, '
                      'reference, xla_fast. More than one: alternated in the timed repeats')
  p.add_argument('--compare', action='store_true', help='also the reference lowering (same as --impl IMPL,reference)')
  p.add_argument('--models', default='full', help='comma-separated model sizes: full, tiny (ModelConfig.full/tiny)')
  p.add_argument('--compile-threads', type=int, default=4, help='lowerings compiled concurrently')
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
  tt = torch.from_numpy(np.array(t))
  tc = torch.from_numpy(ctx)
  src = {v.shape[3]: torch.from_numpy(np.ascontiguousarray(np.moveaxis(v, -1, 1))) for v in vols}
  del vols
  n = args.chunks or tx.shape[0]

  def run():
    return [model(tx[i:i + n], tt[i:i + n], tc[i:i + n], source_dict={k: v[i:i + n] for k, v in src.items()})
            for i in range(0, tx.shape[0], n)]

  with torch.no_grad():
    ts = []
    for _ in range(args.torch_repeats):
      t0 = time.perf_counter()
      run()
      ts.append(time.perf_counter() - t0)
  return ts


# ------------------------------------------------------------------------------------------- main
LOWERINGS = {  # --impl name: (ModelConfig.conv_impl, ModelConfig.attn_impl)
    'fast': ('tuned', 'fast'),
    'reference': ('xla', 'reference'),
    'xla_fast': ('xla', 'fast'),
    'tuned_reference': ('tuned', 'reference'),
}


def lowering_names(args) -> list:
  names = []
  for name in args.impl.split(','):
    name = name.strip()
    if name == 'all':
      names += ['fast', 'reference', 'xla_fast']
    elif name == 'auto':
      lw = ModelConfig().lowering()
      names.append(next(k for k, v in LOWERINGS.items() if v == (lw.conv, lw.attn)))
    elif name in LOWERINGS:
      names.append(name)
    else:
      raise SystemExit(f'--impl {name!r}: use {", ".join(LOWERINGS)}, auto or all')
  if args.compare:
    names.append('reference')
  return list(dict.fromkeys(names))


def unet_of(cfg: ModelConfig, impl: str, dtype, remat: bool) -> DepthWiseAttentionUNet:
  """The UNet with lowering `impl`: a static module field, so each lowering is its own jit trace."""
  return DepthWiseAttentionUNet(cfg.unet, dtype, remat, cfg.with_lowering(*LOWERINGS[impl]).lowering())


def main(args):
  impls = lowering_names(args)
  dtype = jnp.bfloat16 if args.dtype == 'bfloat16' else jnp.float32
  print(f'jax {jax.__version__} {jax.devices()[0].platform} ({jax.devices()[0].device_kind}), {os.cpu_count()} cpus, '
        f'batch {args.batch}, dtype {args.dtype}, models {args.models}, impl {"+".join(impls)} '
        f'({", ".join(f"{i}: conv {LOWERINGS[i][0]}/attn {LOWERINGS[i][1]}" for i in impls)}; auto here: '
        f'{ModelConfig().lowering()}), chunks {args.chunks or "-"}, '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}', flush=True)
  summary = []
  for size in args.models.split(','):
    size = size.strip()
    if size not in ('full', 'tiny'):
      raise SystemExit(f'--models {size!r}: use full or tiny')
    summary += run_model(args, size, getattr(ModelConfig, size)(), dtype, impls)
  if len(summary) > 1:
    print()
    print('summary (fraction: model FLOPs / best time / best in-run matmul rate; vs first: best time / the first '
          'lowering\'s best time, same model)')
    print(f'{"model":6s} {"lowering":16s} {"conv":6s} {"attn":9s} {"best s":>9s} {"median s":>9s} {"fraction":>8s} '
          f'{"vs first":>8s}')
    for size, impl, best, med, frac, rel in summary:
      print(f'{size:6s} {impl:16s} {LOWERINGS[impl][0]:6s} {LOWERINGS[impl][1]:9s} {best:9.4f} {med:9.4f} '
            f'{frac:8.3f} {rel:8.3f}')


def run_model(args, size, cfg, dtype, impls):
  """Compiles and times the UNet of `cfg` for each lowering; prints its table, returns summary rows."""
  print(f'\n=== {size} model ===', flush=True)
  models = {impl: unet_of(cfg, impl, dtype, args.remat) for impl in set(impls) | {'reference'}}
  inputs = unet_inputs(cfg, args.batch, args.seed)
  t0 = time.perf_counter()
  one = jax.tree.map(lambda a: a[:1], inputs)
  params = random_params(models['reference'], one, args.seed)   # the same tree for every lowering
  n_params = sum(p.size for p in jax.tree.leaves(params))
  print(f'init: {n_params / 1e6:.1f}M params in {time.perf_counter() - t0:.1f} s', flush=True)

  def make_forward(model):
    """A fresh function per variant (each closes over its own module)."""
    def forward(p, x, t, ctx, vols):
      if not args.chunks or args.chunks >= x.shape[0]:
        return model.apply({'params': p}, x, t, ctx, vols)
      if x.shape[0] % args.chunks:
        raise SystemExit(f'--chunks {args.chunks} does not divide --batch {x.shape[0]}')
      split = lambda a: a.reshape((-1, args.chunks) + a.shape[1:])
      out = jax.lax.map(lambda xs: model.apply({'params': p}, *xs), jax.tree.map(split, (x, t, ctx, vols)))
      return out.reshape((-1,) + out.shape[2:])
    return forward

  # Model FLOPs: the literal formulation's dot/conv FLOPs (what the original computes); a variant that
  # reorders the maths (depth attention) executes fewer, counted separately.
  model_flops = jaxpr_flops(jax.make_jaxpr(make_forward(models['reference']))(params, *inputs).jaxpr)

  # Trace every variant, then compile them concurrently (XLA compiles without the GIL): on an accelerator
  # host the compiles are most of the run.
  lowered, t_lower = {}, {}
  for impl in impls:
    t0 = time.perf_counter()
    lowered[impl] = jax.jit(make_forward(models[impl])).lower(params, *inputs)
    t_lower[impl] = time.perf_counter() - t0

  def compile_one(impl):
    t0 = time.perf_counter()
    return lowered[impl].compile(), time.perf_counter() - t0

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(max(1, args.compile_threads)) as pool:
    compiled_all = dict(zip(impls, pool.map(compile_one, impls)))
  print(f'traced in {sum(t_lower.values()):.1f} s, compiled {len(impls)} lowerings in {time.perf_counter() - t0:.1f} s '
        f'({args.compile_threads} at a time)', flush=True)
  runs = {}
  for impl in impls:
    compiled, t_compile = compiled_all.pop(impl)
    executed = jaxpr_flops(jax.make_jaxpr(make_forward(models[impl]))(params, *inputs).jaxpr)
    try:
      ca = compiled.cost_analysis()
      ca = ca[0] if isinstance(ca, (list, tuple)) else ca
      flops_xla = float(ca.get('flops', float('nan')))
    except Exception:  # noqa: BLE001
      flops_xla = float('nan')
    try:
      temp_gib = compiled.memory_analysis().temp_size_in_bytes / 2 ** 30
    except Exception:  # noqa: BLE001
      temp_gib = float('nan')
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(params, *inputs))
    t_first = time.perf_counter() - t0
    if not np.isfinite(np.asarray(out)).all():
      raise SystemExit(f'{impl}: non-finite UNet output')
    runs[impl] = dict(compiled=compiled, compile=t_compile, first=t_first, executed=executed, xla=flops_xla,
                      temp=temp_gib, out=np.asarray(out), times=[])
    print(f'{impl}: trace {t_lower[impl]:.1f} s, compile {t_compile:.1f} s, first call {t_first:.2f} s, executed '
          f'dot/conv FLOPs {executed / 1e12:.4g} T, XLA cost analysis {flops_xla / 1e12:.4g} T, XLA temp buffers '
          f'{temp_gib:.2f} GiB, RSS so far {rss_gib():.2f} GiB', flush=True)
    del out

  # Steady state: alternate the variants, with a matmul measurement between every two UNet calls, so
  # that a shared machine's load hits them alike; each call's fraction uses the matmul rates measured
  # just before and after it.
  peaks = [matmul_peak(args.matmul_size, args.matmul_repeats)]
  for _ in range(args.repeats):
    for impl in impls:
      runs[impl]['times'] += timed(lambda: runs[impl]['compiled'](params, *inputs), 1)
      peaks.append(matmul_peak(args.matmul_size, args.matmul_repeats))
      runs[impl].setdefault('local_peaks', []).append((peaks[-2] + peaks[-1]) / 2)
      print(f'  {impl}: {runs[impl]["times"][-1]:.4f} s (matmul {peaks[-2]:.1f} / {peaks[-1]:.1f} GFLOP/s around it)',
            flush=True)

  rows = [(f'jax {impl}', min(r['times']), statistics.median(r['times']), r['executed']) for impl, r in runs.items()]
  if 'reference' in runs and len(runs) > 1:
    ref = runs['reference']['out']
    for impl in impls:
      if impl != 'reference':
        print(f'max |{impl} - reference| = {np.abs(runs[impl]["out"] - ref).max():.2e} (output scale '
              f'{np.abs(ref).max():.2f})')
  for r in runs.values():
    r.pop('compiled')
  torch_local = None
  if args.torch and size == 'full':
    del params
    p0 = matmul_peak(args.matmul_size, args.matmul_repeats)
    tts = run_torch(args, cfg, inputs)
    p1 = matmul_peak(args.matmul_size, args.matmul_repeats)
    peaks += [p0, p1]
    rows.append(('torch original', min(tts), statistics.median(tts), model_flops))
    torch_local = statistics.median(model_flops / t / 1e9 / ((p0 + p1) / 2) for t in tts)

  peak = max(peaks)
  print()
  print(f'model FLOPs (dot+conv of the original formulation): {model_flops / 1e12:.4g} T for {args.batch} rows')
  print(f'float32 matmul rate ({args.matmul_size}^3, best of {args.matmul_repeats}, between UNet calls): '
        f'{", ".join("%.1f" % p for p in peaks)} GFLOP/s -> peak {peak:.1f}')
  local = {'torch original': torch_local} if torch_local is not None else {}
  for impl, r in runs.items():
    fr = [model_flops / t / 1e9 / p for t, p in zip(r['times'], r['local_peaks'])]
    local[f'jax {impl}'] = statistics.median(fr)
    print(f'{impl}: steady-state times {", ".join("%.4f" % t for t in r["times"])} s; fraction of the matmul '
          f'rate measured around each call {", ".join("%.3f" % f for f in fr)}')
  print(f'peak RSS {rss_gib():.2f} GiB (whole process)')
  print()
  print(f'{"":20s} {"best s":>8s} {"median s":>8s} {"model TF":>8s} {"exec TF":>7s} {"GFLOP/s":>8s} '
        f'{"peak GF/s":>9s} {"fraction":>8s} {"local frac":>10s}')
  for name, b, m, fl in rows:
    rate = model_flops / b / 1e9
    loc = local.get(name, float('nan'))
    print(f'{name:20s} {b:8.4f} {m:8.4f} {model_flops / 1e12:8.3f} {fl / 1e12:7.3f} {rate:8.1f} {peak:9.1f} '
          f'{rate / peak:8.3f} {loc:10.3f}')
  print('GFLOP/s and fractions use the model FLOPs. fraction: best-time rate / best matmul rate of the run;\n'
        'local frac: median over calls of (rate / mean of the matmul rates measured just before and after).')
  first = min(runs[impls[0]]['times'])
  return [(size, impl, min(r['times']), statistics.median(r['times']), model_flops / min(r['times']) / 1e9 / peak,
           min(r['times']) / first) for impl, r in runs.items()]


if __name__ == '__main__':
  main(ARGS)
