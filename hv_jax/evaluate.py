"""Evaluate generated views (and meshes) against GSO ground truth: every metric of the paper in one command.

  python -m hv_jax.evaluate --config=configs/evaluate.py --config.pred=outputs/gso --config.gt=PATH/gso-eval \
      --config.out=results/gso [--config.clip=clip-vit-large-patch14/] [--config.lpips_vgg=vgg16-397923af.pth] \
      [--config.raft=raft-things.pth] [--config.meshes=outputs/gso_neus]

Every setting: `EvaluateSettings` below (--help lists them; without --config=FILE its defaults are the
config). `pred` holds one folder per object with the sampler's strips 0.png, 1.png, ... (256×4096, 16 views
left to right: the layout of the original `generate.py`); `gt` the GSO-eval folders (000.png … 015.png RGBA and
model.obj). Per object and instance: PSNR, SSIM, LPIPS (averaged over the 16 views as eval_nvs.py), E_flow
(eval_consistency.py), the CD score terms (eval_CD_score.py) and, with `meshes`
(MESHES/<object>-<k>-neus/mesh.ply, or MESHES/<object>/<k>/mesh.ply), Chamfer distance and volume IoU.

Writes OUT/objects/<object>.json (per instance and per view, written atomically as each object finishes: an
interrupted run resumes where it stopped), OUT/results.csv, OUT/summary.json, OUT/table.md (mean over
objects of the per-object best, average and variance over instances, next to the paper's numbers) and
OUT/figure.png. A metric whose weights are not given is reported as unavailable with the reason; the others
are still computed. random_weights=True runs every learned metric with random weights (benchmarks, smoke
tests: the numbers mean nothing, and every output says so).

Resume: a stored OUT/objects/<object>.json is reused only when it was made from the same inputs and settings.
Each record keeps `inputs` ({'pred:<object>/<k>.png' | 'gt:<object>/000.png' … | 'gt:<object>/model.obj' |
'meshes:<path under meshes>': sha256 of the file}; the GT mesh and the meshes only with `meshes`) and
`settings` (random_weights, ssim_border, whether meshes were given and the GT rotation, and per learned
metric whether it is available and the sha256 of its weight files (digest.weights_identity), or 'random';
flow_batch is left out: it does not change the numbers). Anything different, or a record without
these keys (an older version), is recomputed; the log (stderr) says which objects were reused and why each
other one is recomputed. overwrite=True recomputes everything.

With `meshes` the GT rotation is chosen by object name (hv_jax.metrics.geometry, the 30 GSO-eval objects): an
object with a GT model.obj whose name is not in that table is refused before any work, with the closest
known names, unless --config.gt_rotation=NAME=DEG names its rotation (0 if its GT mesh needs none).

Non-finite numbers in the JSON files (PSNR of identical images is inf): JSON has no inf/nan, so
OUT/objects/*.json and OUT/summary.json write them as the strings "inf", "-inf" and "nan" (Python's
float() reads them back; `load_record` decodes a record's per-instance and per-view values). results.csv and
table.md show them as before (inf / ∞). OUT is created when the first result is written: a run that fails
before that leaves no folder behind.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import re
import sys
import time
from typing import Callable, Dict, List, Optional

import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from hv_jax import atomic, checks, digest
from hv_jax import cli, optional
from hv_jax import settings as settings_lib
from hv_jax.data import matting, views
from hv_jax.data.views import NUM_VIEWS
from hv_jax.errors import UserError
from hv_jax.metrics import cd_score, flow, geometry, image, lpips, stats
from hv_jax.models import clip
from hv_jax.models.config import CLIPModelConfig

METRICS = ('psnr', 'ssim', 'lpips', 'e_flow', 'cd_score', 'chamfer', 'iou')


# ----------------------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True)
class MetricWeights:
  """The learned metrics' weight files (the studies' `metrics` block has them too): a metric without its file
  is unavailable, with the reason; the others are still computed."""
  clip: str = ''              # CLIP weights: a Hugging Face CLIPModel folder or OpenAI ViT-L-14.pt
  clip_tokenizer: str = ''    # folder with vocab.json + merges.txt (default: clip, when it is a folder)
  lpips_vgg: str = ''         # torchvision VGG16 weights (vgg16-397923af.pth), or an .npz of python -m convert.lpips
  lpips_lin: str = ''         # LPIPS linear heads (default: the lpips package's v0.1/vgg.pth)
  raft: str = ''              # RAFT weights (raft-things.pth)
  random_weights: bool = False   # random weights for every learned metric (the numbers mean nothing)


@dataclasses.dataclass(frozen=True)
class EvaluateSettings(MetricWeights):
  """Every setting of `python -m hv_jax.evaluate` (configs/evaluate.py: the paper's GSO evaluation)."""
  pred: str = ''              # folder of <object>/<k>.png strips (the sampler output)
  gt: str = ''                # GSO-eval folder: <object>/000.png … 015.png, model.obj
  out: str = ''               # results folder
  objects: str = ''           # comma list (default: every object folder in pred)
  num_samples: int = 0        # expected strips per object (0: any, but the same for every object)
  meshes: str = ''            # folder of <object>-<k>-neus/mesh.ply (Chamfer, volume IoU)
  gt_rotation: str = ''       # NAME=DEG[,NAME=DEG]: GT mesh rotation of objects that are not GSO-eval objects
  ssim_border: str = 'crop'   # 'crop': SSIM map without its 5-px border (torchmetrics before PR #2721, Sep 2024: the paper's); 'full'
  flow_batch: int = 0         # view sets per RAFT call (0: all at once; lower to save memory)
  matting: str = 'auto'       # GT views without a usable alpha are matted: auto (rembg if matting_model, else plain) | plain | rembg | alpha (refuse them)
  matting_model: str = ''     # rembg model file for matting
  overwrite: bool = False     # recompute objects that already have results
  progress: bool = True       # progress bar on stderr

  def validate(self) -> None:
    """One UserError line naming the field (--config.<field>) for a missing folder or a bad value."""
    for name, what in (('pred', 'the folder of generated strips'), ('gt', 'the GSO-eval folder'),
                       ('out', 'the results folder')):
      if not getattr(self, name):
        raise UserError(f'no {name}: set --config.{name}=DIR ({what})')
    if self.ssim_border not in ('crop', 'full'):
      raise UserError(f"--config.ssim_border={self.ssim_border!r}: use 'crop' or 'full'")
    checks.number(self, 'num_samples', lo=0, integer=True, hint='0: any')
    checks.number(self, 'flow_batch', lo=0, integer=True, hint='0: all view sets at once')
    gt_rotations(self.gt_rotation)   # a malformed gt_rotation fails here
    matting.check_settings(self.matting, self.matting_model)


# ----------------------------------------------------------------------------- inputs

def gt_views(gt_dir: str, method: str = 'auto', model: str = '') -> np.ndarray:
  """[16, H, W, 4] uint8 RGBA views 000.png … 015.png. Views without a usable alpha (RGB photos or renders)
  get a matte as their alpha (`gt_mask_method`), so every metric sees them on white as it sees GSO's."""
  try:
    gt = views.read_gt_views(gt_dir)
  except (FileNotFoundError, OSError, ValueError) as e:
    raise UserError(f'{gt_dir}: {e}') from e
  method = gt_mask_method(gt_dir, method, model)
  if method == 'alpha':       # their own alpha (or, with matting='alpha', views without one read as opaque)
    return gt
  session = matting.rembg_session(model) if method == 'rembg' else None
  for i, v in enumerate(gt):
    rgb = np.ascontiguousarray(v[..., :3])
    v[..., 3] = np.round(matting.matte(rgb, method, session=session, name=f'{gt_dir} view {i:03d}') * 255)
  return gt


def gt_mask_method(gt_dir: str, method: str, model: str) -> str:
  """'alpha' when the GT views carry their mask (view 000's alpha is usable), else the matte they get."""
  try:
    with Image.open(os.path.join(gt_dir, '000.png')) as im:
      alpha = np.asarray(im.convert('RGBA'))[..., 3]
  except (FileNotFoundError, OSError, ValueError):
    return 'alpha'            # gt_views reports the missing or broken view
  return matting.resolve(method, alpha, model)


def instance_files(pred_dir: str) -> List[str]:
  """The strips <k>.png of one object, k = 0..N-1 without gaps."""
  ks = sorted(int(m.group(1)) for f in os.listdir(pred_dir) if (m := re.fullmatch(r'(\d+)\.png', f)))
  if not ks:
    raise UserError(f'{pred_dir}: no generated strips (0.png, 1.png, …)')
  if ks != list(range(len(ks))):
    raise UserError(f'{pred_dir}: strips must be numbered 0..N-1 without gaps, found {ks}')
  return [os.path.join(pred_dir, f'{k}.png') for k in ks]


def pred_views(pred_dir: str, size: int) -> np.ndarray:
  """[N, 16, H, W, 3] uint8: every strip split into its 16 views (np.array_split along the width)."""
  try:   # the strips must hold views of the GT's size
    return np.stack([views.read_strip(path, size) for path in instance_files(pred_dir)])
  except views.StripError as e:
    raise UserError(str(e)) from e


def mesh_path(meshes: str, obj: str, k: int) -> Optional[str]:
  for p in (os.path.join(meshes, f'{obj}-{k}-neus', 'mesh.ply'), os.path.join(meshes, obj, str(k), 'mesh.ply')):
    if os.path.isfile(p):
      return p
  return None


# ----------------------------------------------------------------------------- learned metrics

@dataclasses.dataclass
class Backend:
  """A metric's computation, or why it is unavailable."""
  fn: Optional[Callable] = None
  reason: str = ''
  random: bool = False


def converters():
  """The `convert` package with its metric converters (clip, lpips, raft): original (PyTorch) weight files
  -> hv_jax params. The one way this command reads such files.

  Lazy: convert/ lives in the repository checkout and is not installed with hv_jax; a run given converted
  (.npz) weights or none never imports it (random_weights does, for the RAFT weights it draws in the
  original layout; no torch). One line (UserError) when it cannot be imported.
  """
  try:
    import convert.clip  # lazy: see the docstring
    import convert.lpips  # lazy: see the docstring
    import convert.raft  # lazy: see the docstring
  except ModuleNotFoundError as e:
    if (e.name or '').split('.')[0] != 'convert':
      raise
    raise cli.no_checkout('reading original (PyTorch) metric weights') from None
  return convert


def clip_backend(w: MetricWeights, flag: str = '--config.') -> Backend:
  """The CD score's CLIP (random with w.random_weights; unavailable, with the reason, without w.clip).
  `flag`: how the reasons name the weights' fields (the studies: '--config.metrics.')."""
  if w.random_weights:
    return random_clip_backend(CLIPModelConfig())
  if not w.clip:
    return Backend(reason=f'no CLIP weights: set {flag}clip (a Hugging Face openai/clip-vit-large-patch14 '
                          f'folder, or OpenAI ViT-L-14.pt with {flag}clip_tokenizer)')
  params, config, _ = converters().clip.load(w.clip)
  tok_dir = w.clip_tokenizer or (w.clip if os.path.isdir(w.clip) else None)
  if tok_dir is None:
    return Backend(reason=f'no CLIP tokenizer: set {flag}clip_tokenizer (a folder with vocab.json and merges.txt)')
  tokenizer = cd_score.load_tokenizer(tok_dir)
  ids_of = lambda prompt: cd_score.tokenize(prompt, tokenizer, config.text.context_length)
  return cd_backend(params, config, ids_of)


def random_clip_backend(config, seed: int = 0) -> Backend:
  """The CD score with a randomly initialised CLIP of `config` (benchmarks, demos: the numbers mean nothing).
  No tokenizer files: the prompt's bytes between start/end tokens, zero padded."""
  params = jax.jit(clip.init_params, static_argnums=0)(config, jax.random.PRNGKey(seed))

  def ids_of(prompt):
    n = config.text.context_length
    ids = np.zeros((1, n), np.int32)
    body = [256 + b for b in prompt.encode()][:n - 2]
    ids[0, :len(body) + 2] = [config.text.vocab_size - 2, *body, config.text.vocab_size - 1]
    return ids
  return cd_backend(params, config, ids_of, random=True)


def cd_backend(params, config, ids_of: Callable[[str], np.ndarray], random: bool = False) -> Backend:
  """CD-score terms of every instance: the prompt comes from the object name (cd_score.prompt_for)."""

  def fn(obj, gt, pred):
    out = cd_score.evaluate_object(params, config, pred, ids_of(cd_score.prompt_for(obj)))
    return {'cd_D': out['D'], 'cd_S_var': out['S_var']}
  return Backend(fn, random=random)


def lpips_backend(w: MetricWeights, flag: str = '--config.') -> Backend:
  """LPIPS (VGG16): random with w.random_weights; unavailable, with the reason, without w.lpips_vgg."""
  if w.random_weights:
    params = lpips.random_params(0)
  elif w.lpips_vgg.endswith('.npz'):
    params = lpips.load_npz(w.lpips_vgg)      # converted already (python -m convert.lpips)
  elif w.lpips_vgg:
    params = converters().lpips.load(w.lpips_vgg, w.lpips_lin or None)
  else:
    return Backend(reason=f"no VGG16 weights for LPIPS: set {flag}lpips_vgg (torchvision's vgg16-397923af.pth, "
                          "or an .npz from python -m convert.lpips)")
  fn_jit = jax.jit(lpips.lpips)

  def fn(obj, gt, pred):
    g = to_unit(gt) * 2 - 1   # eval_nvs: lpips_fn(gt*2-1, pred*2-1)
    p = to_unit(pred) * 2 - 1
    return {'lpips': np.asarray(fn_jit(params, np.broadcast_to(g, p.shape), p))}
  return Backend(fn, random=w.random_weights)


def raft_backend(w: MetricWeights, flag: str = '--config.', flow_batch: int = 0, cache_gt_flows: bool = False
                 ) -> Backend:
  """E_flow (RAFT): random with w.random_weights; unavailable, with the reason, without w.raft. `flow_batch`:
  view sets per RAFT call (0: all); `cache_gt_flows`: keep the GT's flows (studies: one GT set at a time)."""
  if w.random_weights:
    params = converters().raft.random_params(0)   # the fixtures' random RAFT, drawn in the original layout
  else:
    if not w.raft:
      return Backend(reason=f'no RAFT weights: set {flag}raft=raft-things.pth (princeton-vl/RAFT models.zip)')
    params = converters().raft.load(w.raft)
  cache = {} if cache_gt_flows else None
  batch = int(flow_batch) or None
  return Backend(lambda obj, gt, pred: {'e_flow': flow.e_flow(params, gt, pred, batch_size=batch, gt_cache=cache)},
                 random=w.random_weights)


def to_unit(img_u8: np.ndarray) -> np.ndarray:
  """eval_nvs.color_map_forward in numpy (float32 / 255, RGBA on white), bit-exact with the original: XLA
  may divide by a constant as a multiply by its reciprocal, one ulp off, which turns PSNR's inf into ~150 dB."""
  x = img_u8.astype(np.float32) / np.float32(255)
  if x.shape[-1] == 4:
    x = x[..., :3] * x[..., 3:] + (1 - x[..., 3:])
  return x


@functools.lru_cache(maxsize=None)
def _psnr_ssim(crop_border: bool):
  """One jitted PSNR + SSIM per border mode (built once: a fresh lambda per object would recompile)."""
  return jax.jit(lambda g, p: (image.psnr(p, g), image.ssim(p, g, crop_border=crop_border)))


def image_fn(obj, gt, pred, crop_border: bool):
  p = to_unit(pred)
  ps, ss = _psnr_ssim(crop_border)(np.broadcast_to(to_unit(gt), p.shape), p)
  return {'psnr': np.asarray(ps), 'ssim': np.asarray(ss)}


def gt_rotations(spec: str) -> Dict[str, float]:
  """gt_rotation 'NAME=DEG,NAME=DEG' -> {name: degrees} (finite numbers only)."""
  out = {}
  for item in filter(None, (x.strip() for x in (spec or '').split(','))):
    name, sep, deg = item.partition('=')
    try:
      value = float(deg)
    except ValueError:
      value = None
    if not sep or not name or value is None or not math.isfinite(value):
      raise UserError(f'--config.gt_rotation={item!r}: expected NAME=DEGREES with a finite number (e.g. mug=0)')
    out[name] = value
  return out


def gt_rotation_of(obj: str, s: EvaluateSettings) -> float:
  """The GT mesh rotation of object `obj`: s.gt_rotation, else the GSO-eval table (UserError if unknown)."""
  given = gt_rotations(s.gt_rotation)
  if obj in given:
    return given[obj]
  try:
    return geometry.gt_rotation_angle(obj, hint=f'set --config.gt_rotation={obj}=0 if its GT mesh needs no rotation')
  except geometry.UnknownObjectError as e:
    raise UserError(f'--config.meshes: {e}') from None


def _geometry_fn(s: EvaluateSettings):

  def fn(obj, gt_dir, n):
    gt_mesh = os.path.join(gt_dir, 'model.obj')
    paths = [mesh_path(s.meshes, obj, k) for k in range(n)]
    if not os.path.isfile(gt_mesh) or None in paths:
      missing = gt_mesh if not os.path.isfile(gt_mesh) else f'mesh of instance {paths.index(None)}'
      return None, f'no {missing}'
    rotation = gt_rotation_of(obj, s)
    try:
      rows = [geometry.evaluate(p, gt_mesh, obj, rotation=rotation) for p in paths]
    except geometry.MeshError as e:
      raise UserError(str(e)) from None
    return {'chamfer': np.array([r['chamfer'] for r in rows]), 'iou': np.array([r['iou'] for r in rows])}, ''
  return fn


def backends(s: EvaluateSettings) -> Dict[str, Backend]:
  """The learned metrics of a run; a weight file that fails to load makes its metric unavailable."""
  out = {}
  for name, make in (('cd_score', clip_backend), ('lpips', lpips_backend),
                     ('e_flow', functools.partial(raft_backend, flow_batch=s.flow_batch))):
    try:
      out[name] = make(s)
    except Exception as e:  # noqa: BLE001  (a bad weight file disables one metric, not the run)
      out[name] = Backend(reason=f'weights could not be loaded: {str(e).splitlines()[0]}')
  return out


# ----------------------------------------------------------------------------- per object

def evaluate_object(obj: str, s: EvaluateSettings, metric_backends: Dict[str, Backend], compiles: bool = False) -> dict:
  """Every metric of one object. `compiles` marks the first object of a process: its seconds include jit."""
  gt_dir, pred_dir = os.path.join(s.gt, obj), os.path.join(s.pred, obj)
  gt = gt_views(gt_dir, s.matting, s.matting_model)
  pred = pred_views(pred_dir, gt.shape[1])
  if gt.shape[1] != gt.shape[2]:
    raise UserError(f'{gt_dir}: views must be square, got {gt.shape[2]}x{gt.shape[1]}')
  n = pred.shape[0]
  record = {'object': obj, 'instances': n, 'per_view': {}, 'per_instance': {}, 'seconds': {}, 'cpu_seconds': {},
            'unavailable': {}, 'random_weights': bool(s.random_weights), 'ssim_border': s.ssim_border,
            'seconds_include_compilation': compiles}

  def put(values: Dict[str, np.ndarray]):
    for k, v in values.items():
      v = np.asarray(v, np.float64)
      if v.ndim == 2:   # [N, 16] per view: eval_nvs.py averages over the views
        record['per_view'][k] = v.tolist()
        v = v.mean(1)
      record['per_instance'][k] = v.tolist()

  def clock():
    return time.perf_counter(), time.process_time()

  def took(name, start):
    # wall and CPU seconds (all threads): CPU/wall drops when another job shares the cores
    record['seconds'][name] = time.perf_counter() - start[0]
    record['cpu_seconds'][name] = time.process_time() - start[1]

  t = clock()
  put(image_fn(obj, gt, pred, s.ssim_border == 'crop'))
  took('psnr_ssim', t)
  for name, b in metric_backends.items():
    if b.fn is None:
      record['unavailable'][name] = b.reason
      continue
    t = clock()
    put(b.fn(obj, gt, pred))
    took(name, t)
  if s.meshes:
    t = clock()
    vals, why = _geometry_fn(s)(obj, gt_dir, n)
    if vals is None:
      record['unavailable']['geometry'] = why
    else:
      put(vals)
      took('geometry', t)
  else:
    record['unavailable']['geometry'] = 'no meshes given (--config.meshes)'
  return record


# ----------------------------------------------------------------------------- summary

def summarize(records: List[dict]) -> dict:
  per_instance = {r['object']: {k: np.asarray(v) for k, v in r['per_instance'].items() if k in METRICS}
                  for r in records}
  per_view = {r['object']: {k: np.asarray(v) for k, v in r['per_view'].items()} for r in records}
  out = {'summary': stats.summarize(per_instance), 'script_nvs': stats.script_nvs_summary(per_view)}
  cd = [r for r in records if 'cd_D' in r['per_instance']]
  if cd:
    d = np.concatenate([r['per_instance']['cd_D'] for r in cd])
    s = np.concatenate([r['per_instance']['cd_S_var'] for r in cd])
    out['cd_score'] = {'script': cd_score.cd_score(d, s), 'per_instance': cd_score.cd_score(d, s, variant='per_instance'),
                       'objects': len(cd)}
  unavailable = {}
  for r in records:
    for k, why in r['unavailable'].items():
      unavailable.setdefault(k, why)
  out['unavailable'] = unavailable
  out['objects'] = [r['object'] for r in records]
  out['random_weights'] = any(r['random_weights'] for r in records)
  return out


def write_outputs(out_dir: str, records: List[dict], summary: dict) -> None:
  metrics = [m for m in METRICS if any(m in r['per_instance'] for r in records)] + \
            [m for m in ('cd_D', 'cd_S_var') if any(m in r['per_instance'] for r in records)]
  per_instance = {r['object']: {k: np.asarray(v) for k, v in r['per_instance'].items()} for r in records}
  atomic.write_text(os.path.join(out_dir, 'results.csv'),
                    '\n'.join(','.join(row) for row in stats.csv_rows(per_instance, metrics)) + '\n')
  atomic.write_json(os.path.join(out_dir, 'summary.json'), encode_nonfinite(summary))
  head = [f'# Evaluation of {len(records)} objects', '',
          f"SSIM border: {records[0].get('ssim_border', 'crop')} (see --config.ssim_border); CD score as "
          'eval_CD_score.py + gso_nvs_statistics.py (ratio of means over all instances).', '']
  if summary['random_weights']:
    head += ['**Random weights (--config.random_weights): these numbers measure nothing; they exercise the '
             'pipeline.**', '']
  table = stats.markdown_table(summary['summary'], summary.get('cd_score'), summary['script_nvs'])
  tail = [''] + [f'- {k}: unavailable ({why})' for k, why in summary['unavailable'].items()]
  atomic.write_text(os.path.join(out_dir, 'table.md'), '\n'.join(head) + table + '\n'.join(tail) + '\n')
  write_figure(os.path.join(out_dir, 'figure.png'), records, summary['random_weights'])


def write_figure(path: str, records: List[dict], random_weights: bool) -> None:
  """Per object, every instance's value of each available metric (dots) and the object's mean (bar)."""
  plt = optional.pyplot()
  shown = [m for m in METRICS if any(m in r['per_instance'] for r in records)]
  fig, axes = plt.subplots(len(shown), 1, figsize=(max(6, 0.45 * len(records) + 2), 2.2 * len(shown)),
                           squeeze=False)
  names = [r['object'] for r in records]
  for ax, m in zip(axes[:, 0], shown):
    for i, r in enumerate(records):
      v = np.asarray(r['per_instance'].get(m, []), np.float64)
      finite = v[np.isfinite(v)]
      if len(finite) < len(v):   # PSNR of identical images
        ax.annotate('∞' * (len(v) - len(finite)), (i, 0), xycoords=('data', 'axes fraction'), ha='center', va='bottom')
      if len(finite):
        ax.bar(i, finite.mean(), color='#c8d7e8', width=0.7)
        ax.plot([i] * len(finite), finite, 'o', color='#1f4e79', markersize=3)
    ax.set_ylabel(stats.LABELS[m])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names if ax is axes[-1, 0] else [], rotation=60, ha='right', fontsize=7)
  title = 'per-object metrics (bars: mean over instances, dots: instances)'
  fig.suptitle(title + (' — RANDOM WEIGHTS' if random_weights else ''), fontsize=9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=110)
  plt.close(fig)
  atomic.write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- CLI

def objects_of(s: EvaluateSettings) -> List[str]:
  for d, what in ((s.pred, '--config.pred'), (s.gt, '--config.gt')):
    if not os.path.isdir(d):
      raise UserError(f'{what} {d} is not a folder')
  if s.objects:
    names = s.objects.split(',')
  else:
    names = sorted(d for d in os.listdir(s.pred) if os.path.isdir(os.path.join(s.pred, d)))
  if not names:
    raise UserError(f'--config.pred={s.pred} holds no object folders')
  missing = [n for n in names if not os.path.isdir(os.path.join(s.gt, n))]
  if missing:
    raise UserError(f'no GT folder in --config.gt={s.gt} for: {", ".join(missing)}')
  return names


# ----------------------------------------------------------------------------- stored records

NON_FINITE = {'inf': float('inf'), '-inf': float('-inf'), 'nan': float('nan')}


def encode_nonfinite(x):
  """A copy of x with every non-finite float as the string 'inf', '-inf' or 'nan' (JSON has none of them)."""
  if isinstance(x, dict):
    return {k: encode_nonfinite(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [encode_nonfinite(v) for v in x]
  if isinstance(x, (float, np.floating)) and not math.isfinite(x):
    return 'nan' if math.isnan(x) else ('inf' if x > 0 else '-inf')
  return x


def _decode_numbers(x):
  if isinstance(x, list):
    return [_decode_numbers(v) for v in x]
  if isinstance(x, str) and x in NON_FINITE:
    return NON_FINITE[x]
  return x


def load_record(path: str) -> Optional[dict]:
  """A stored OUT/objects/<object>.json with its per-instance and per-view values decoded (the strings
  'inf', '-inf', 'nan' -> floats); None when the file is not a readable record."""
  try:
    with open(path) as f:
      rec = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(rec, dict) or not isinstance(rec.get('per_instance'), dict):
    return None
  for key in ('per_instance', 'per_view'):
    rec[key] = {k: _decode_numbers(v) for k, v in rec.get(key, {}).items()}
  return rec


def object_inputs(obj: str, s: EvaluateSettings, n: int) -> Dict[str, str]:
  """sha256 of every file an object's numbers come from: its strips, the GT views, and with `meshes` the GT
  mesh and the instances' meshes (a missing one is absent, so its arrival changes the inputs too)."""
  files = {f'pred:{obj}/{k}.png': os.path.join(s.pred, obj, f'{k}.png') for k in range(n)}
  files.update({f'gt:{obj}/{k:03}.png': os.path.join(s.gt, obj, f'{k:03}.png') for k in range(NUM_VIEWS)})
  if s.meshes:
    files[f'gt:{obj}/model.obj'] = os.path.join(s.gt, obj, 'model.obj')
    for k in range(n):
      p = mesh_path(s.meshes, obj, k)
      if p is not None:
        files['meshes:' + os.path.relpath(p, s.meshes)] = p
  out = {}
  for key, path in files.items():
    if os.path.isfile(path):
      try:
        out[key] = digest.file_sha256(path)
      except OSError as e:
        raise UserError(f'{path}: cannot read ({e.strerror or e})') from None
  return out


WEIGHT_ARGS = {'cd_score': ('clip', 'clip_tokenizer'), 'lpips': ('lpips_vgg', 'lpips_lin'), 'e_flow': ('raft',)}


def run_settings(s: EvaluateSettings, metric_backends: Dict[str, Backend]) -> dict:
  """The settings that change an object's numbers (not flow_batch, progress, out)."""
  metrics = {}
  for name, b in sorted(metric_backends.items()):
    if b.fn is None:
      metrics[name] = {'available': False}
    elif b.random or s.random_weights:
      metrics[name] = {'available': True, 'weights': 'random'}
    else:
      metrics[name] = {'available': True, 'weights': {a: digest.weights_identity(getattr(s, a))
                                                      for a in WEIGHT_ARGS.get(name, ())}}
  return {'random_weights': bool(s.random_weights), 'ssim_border': s.ssim_border,
          'meshes': bool(s.meshes), 'metrics': metrics}


def _object_settings(obj: str, s: EvaluateSettings, common: dict) -> dict:
  out = dict(common)
  method = gt_mask_method(os.path.join(s.gt, obj), s.matting, s.matting_model)
  if method != 'alpha':        # matted GT views (absent for GSO's own alpha, as records before it say)
    out['gt_masks'] = {'method': method, **({'model': digest.weights_identity(s.matting_model)}
                                            if method == 'rembg' else {})}
  if s.meshes and os.path.isfile(os.path.join(s.gt, obj, 'model.obj')):
    out['gt_rotation_deg'] = gt_rotation_of(obj, s)
  return out


def stale_reason(rec: Optional[dict], n: int, inputs: Dict[str, str], settings: dict) -> str:
  """'' when the stored record `rec` was made from these inputs and settings, else why it is not reusable."""
  if rec is None:
    return 'the stored result is not a readable record'
  if 'inputs' not in rec or 'settings' not in rec:
    return 'the stored result has no input hashes (made by an older version)'
  if rec.get('instances') != n:
    return f"the instance count changed ({rec.get('instances')} stored, {n} now)"
  old = rec['inputs']
  if old != inputs:
    changed = sorted(k for k in set(old) | set(inputs) if old.get(k) != inputs.get(k))
    kinds = [(kind, [k.split(':', 1)[1] for k in changed if k.startswith(prefix)])
             for kind, prefix in (('strips', 'pred:'), ('GT files', 'gt:'), ('meshes', 'meshes:'))]
    return '; '.join(f'{kind} changed since the stored result ({", ".join(files[:4])}'
                     f'{f" and {len(files) - 4} more" if len(files) > 4 else ""})' for kind, files in kinds if files)
  if rec['settings'] != settings:
    keys = sorted(k for k in set(rec['settings']) | set(settings) if rec['settings'].get(k) != settings.get(k))
    if 'metrics' in keys:
      a, b = rec['settings'].get('metrics', {}), settings.get('metrics', {})
      keys = [k for k in keys if k != 'metrics'] + [f'{m} weights' for m in sorted(set(a) | set(b))
                                                    if a.get(m) != b.get(m)]
    return f'settings changed since the stored result ({", ".join(keys)})'
  return ''


def _write(fn, *a):
  try:
    fn(*a)
  except OSError as e:
    raise UserError(f'cannot write to --config.out: {e}') from None


def _log(msg: str) -> None:
  print(f'evaluate: {msg}', file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- CLI (run)

def run(s: EvaluateSettings) -> dict:
  s.validate()
  names = objects_of(s)
  counts = {}
  for n in names:   # check the whole input before any work: mismatched counts fail fast
    counts[n] = len(instance_files(os.path.join(s.pred, n)))
  if s.num_samples and any(c != s.num_samples for c in counts.values()):
    bad = {n: c for n, c in counts.items() if c != s.num_samples}
    raise UserError(f'expected {s.num_samples} strips per object (--config.num_samples), found {bad}')
  if len(set(counts.values())) > 1:
    raise UserError(f'objects have different instance counts {counts}: the statistics need the same N per '
                    'object (set --config.num_samples to name the expected count)')
  if s.meshes:   # every GT mesh's rotation is known before any work (an unknown name is not rotation 0)
    for n in names:
      if os.path.isfile(os.path.join(s.gt, n, 'model.obj')):
        gt_rotation_of(n, s)
  # `out` is made when the first record is written
  atomic.require_writable(s.out, 'cannot write to --config.out={folder}: {problem}')
  metric_backends = backends(s)
  common = run_settings(s, metric_backends)
  plan = []   # (object, inputs, settings, stored record or None)
  reused, recompute = [], []
  for n in names:
    inputs, settings = object_inputs(n, s, counts[n]), _object_settings(n, s, common)
    path = os.path.join(s.out, 'objects', f'{n}.json')
    rec, why = None, 'no stored result'
    if os.path.isfile(path):
      if s.overwrite:
        why = '--config.overwrite=True'
      else:
        rec = load_record(path)
        why = stale_reason(rec, counts[n], inputs, settings)
        if why:
          rec = None
    if rec is not None:
      reused.append(n)
    elif why != 'no stored result':
      recompute.append((n, why))
    plan.append((n, inputs, settings, rec))
  if reused:
    shown = ', '.join(reused[:10]) + (f' and {len(reused) - 10} more' if len(reused) > 10 else '')
    _log(f'reused {len(reused)} of {len(names)} stored objects (same strips, GT files and settings): {shown}')
  for n, why in recompute:
    _log(f'recomputing {n}: {why}')
  records, evaluated = [], 0
  with tqdm(plan, desc='objects', unit='obj', disable=not s.progress) as bar:   # closed before any error line
    for n, inputs, settings, rec in bar:
      if rec is None:
        bar.set_postfix_str(n)
        rec = evaluate_object(n, s, metric_backends, compiles=not evaluated)
        rec['inputs'], rec['settings'] = inputs, settings
        evaluated += 1
        _write(atomic.write_json, os.path.join(s.out, 'objects', f'{n}.json'), encode_nonfinite(rec))
      records.append(rec)
  summary = summarize(records)
  _write(write_outputs, s.out, records, summary)
  return summary


def evaluate(s: EvaluateSettings) -> int:
  summary = run(s)
  print(open(os.path.join(s.out, 'table.md')).read())
  return 0 if summary else 1


def main(argv=None) -> int:
  return cli.main(argv, EvaluateSettings, evaluate, prog='python -m hv_jax.evaluate', doc=__doc__,
                  default=lambda: settings_lib.config_dict(EvaluateSettings))


if __name__ == '__main__':
  sys.exit(main())
