"""From a photo to a 3D asset: the paper's whole test-time pipeline as resumable stages.

  prepare    the cut-out the model sees (hv_jax.data.matting + the sampler's crop): input_rgba.png
  sample     N instances of 16 views at the input elevation (hv_jax.sampling.pipeline)
  select     each instance scored without ground truth (hv_jax.scoring), the best one kept: views.png
  neus       the chosen views masked and reconstructed (hv_jax.neus.pipeline): mesh.ply
  elevation  elevation='auto': the input's elevation estimated from the reconstruction's silhouette
             (hv_jax.elevation); when it moved by more than `elevation_tolerance` from the prior, sample,
             select and neus run again at the estimate
  export     mesh.glb (textured from the views, or vertex-coloured), mesh.obj + .mtl + texture, turntable.gif,
             preview.png (hv_jax.export)

Everything is written under OUTPUT/<input name>/; each round of sample/select/neus in rounds/e<elevation>/.
A rerun skips every stage whose outputs are on disk and were made from the same inputs and settings (the
sampler and NeuS check their own outputs and resume; the other stages keep records in stages/, see
hv_jax.pipeline.stages). report.json holds the settings, the per-stage seconds, the elevation estimate, every
instance's scores and the chosen one.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import trimesh
from absl import logging
from PIL import Image

from hv_jax import atomic, digest, scoring
from hv_jax import elevation as elevation_lib
from hv_jax import settings as settings_lib
from hv_jax.data import matting
from hv_jax.data import preprocess
from hv_jax.data.views import NUM_VIEWS, join_strip, split_strip
from hv_jax.errors import UserError, in_block
from hv_jax.export import preview, write
from hv_jax.metrics import geometry
from hv_jax.models.cameras import default_cameras
from hv_jax.neus import data as neus_data
from hv_jax.neus import pipeline as neus_pipeline
from hv_jax.neus.pipeline import ReconstructSettings
from hv_jax.pipeline import stages
from hv_jax.sampling import pipeline as sampling
from hv_jax.sampling.pipeline import SampleSettings

INPUT_RGBA = 'input_rgba.png'
REPORT = 'report.json'
ELEVATION_RANGE = (-10.0, 40.0)      # the elevations SyncDreamer was trained on
VIEW_SIZE = 256                      # NeuS, scoring and export work on 256 px views (the tiny demo model: 64)

# fields of the nested blocks that the pipeline sets itself: a user value there would be silently replaced
OWNED = {'sample': ('input', 'output_dir', 'elevation', 'checkpoint', 'crop_size', 'matting'),
         'neus': ('input', 'output_dir', 'overwrite')}


@dataclasses.dataclass(frozen=True)
class Hooks:
  """What a long-lived front end (hv_jax.app) hands the stages; the command hands none."""
  model: Optional[sampling.LoadedModel] = None        # params loaded once (else each sampling run loads them)
  on_sample: Optional[sampling.Listener] = None       # the sampler's progress (instances, DDIM steps)
  on_neus: Optional[Callable[[dict], None]] = None    # NeuS's training log rows (hv_jax.neus.pipeline.run)


NO_HOOKS = Hooks()


@dataclasses.dataclass(frozen=True)
class ImageTo3DSettings:
  """Every setting of `python -m hv_jax.image_to_3d` (configs/image_to_3d.py, configs/image_to_3d_demo.py)."""
  input: str = ''                   # an image (RGBA cut-out, or any photo: matted) or a folder of images
  output_dir: str = 'outputs/image_to_3d'
  checkpoint: str = ''              # as hv_jax.sample's: converted orbax dir, the original .ckpt, or 'random'
  elevation: str = 'auto'          # input-view elevation in degrees, or 'auto' (estimated, hv_jax.elevation)
  elevation_prior: float = 30.0     # 'auto': the elevation of the first round
  elevation_tolerance: float = 5.0  # 'auto': sample again at the estimate when it is further than this (degrees)
  matting: str = 'auto'             # the input's cut-out: auto | alpha | plain | rembg (hv_jax.data.matting)
  matting_model: str = ''           # rembg model file for matting='rembg' (nothing is downloaded)
  crop_size: int = 200              # the object's longer side in the 256 px input (SyncDreamer's advice for photos)
  select: int = -1                  # instance to reconstruct: -1 = the best score (hv_jax.scoring), else its index
  texture: bool = True              # bake a texture from the chosen views (else vertex colours only)
  texture_size: int = 1024          # texture atlas side (pixels)
  preview_frames: int = 36          # turntable.gif frames
  overwrite: bool = False           # redo the sampler's and NeuS's outputs made with other settings (else refused)
  sample: SampleSettings = SampleSettings()            # sampler settings (input, elevation, ... set by the pipeline)
  neus: ReconstructSettings = ReconstructSettings()    # NeuS settings (input, output_dir set by the pipeline)

  def validate(self) -> None:
    if not self.input:
      raise UserError('no input: set --config.input=IMAGE (or a folder of images)')
    for block, names in OWNED.items():
      default = SampleSettings() if block == 'sample' else ReconstructSettings()
      for name in names:
        if getattr(getattr(self, block), name) != getattr(default, name):
          top = {'elevation': 'elevation', 'checkpoint': 'checkpoint', 'input': 'input', 'output_dir': 'output_dir',
                 'crop_size': 'crop_size', 'matting': 'matting', 'overwrite': 'overwrite'}[name]
          raise UserError(f'--config.{block}.{name} is set by the pipeline: use --config.{top}')
    try:
      if self.elevation != 'auto':
        preprocess.check_elevation(self.elevation_deg())
      if self.elevation == 'auto':
        preprocess.check_elevation(float(self.elevation_prior))
    except preprocess.InputError as e:
      raise UserError(f'--config.elevation{"" if self.elevation != "auto" else "_prior"}: {e}') from None
    for name in ('elevation_prior', 'elevation_tolerance'):
      v = float(getattr(self, name))
      if not math.isfinite(v):
        raise UserError(f'--config.{name}={v}: must be a finite number')
    if self.elevation_tolerance < 0:
      raise UserError(f'--config.elevation_tolerance={self.elevation_tolerance}: must be >= 0')
    if not 1 <= int(self.crop_size) <= 256:
      raise UserError(f'--config.crop_size={self.crop_size}: must be in [1, 256]')
    if not -1 <= int(self.select) < int(self.sample.sample_num):
      raise UserError(f'--config.select={self.select}: -1 (the best score) or an instance in '
                      f'[0, {self.sample.sample_num - 1}]')
    if int(self.texture_size) < 64 or int(self.preview_frames) < 1:
      raise UserError('--config.texture_size must be >= 64 and --config.preview_frames >= 1')
    matting.check_settings(self.matting, self.matting_model)
    in_block('sample.', self.round_settings(float(self.elevation_prior), Path('x')).validate)
    in_block('neus.', self.neus_settings(Path('x')).validate)
    # a GT mesh (metrics.json's Chamfer / IoU) is read now, not after sampling; NeuS's input here is a round's
    # views.png, whose folder names no object, so the object's name (for its rotation) must be given
    if self.neus.gt_mesh and not self.neus.gt_name and self.neus.gt_rotation is None:
      raise UserError('--config.neus.gt_mesh needs --config.neus.gt_name=OBJECT (the GSO object, for its rotation) '
                      'or --config.neus.gt_rotation=DEGREES')
    neus_pipeline.check_gt(self.neus_settings(Path('x')), prefix='neus.')

  def elevation_deg(self) -> float:
    try:
      return float(self.elevation)
    except ValueError:
      raise UserError(f"--config.elevation={self.elevation!r}: degrees (e.g. 30) or 'auto'") from None

  def round_settings(self, elevation: float, round_dir: Path) -> SampleSettings:
    """The sampler's settings of one round: the prepared cut-out as it is (alpha, no crop), at `elevation`."""
    return dataclasses.replace(self.sample, input=str(round_dir.parent.parent / INPUT_RGBA),
                               output_dir=str(round_dir / 'samples'), elevation=float(elevation),
                               checkpoint=self.checkpoint, crop_size=-1, matting='alpha')

  def neus_settings(self, round_dir: Path) -> ReconstructSettings:
    return dataclasses.replace(self.neus, input=str(round_dir / 'views.png'), output_dir=str(round_dir / 'neus'),
                               overwrite=bool(self.overwrite))


# ----------------------------------------------------------------------------------------------- stages

def prepare(s: ImageTo3DSettings, path: Path, folder: Path) -> Dict[str, Any]:
  """The cut-out the model sees: folder/input_rgba.png (256 px RGBA), the object framed to crop_size."""
  try:
    photo = matting.load_photo(path)       # a missing or unreadable image is one line, before anything is written
  except preprocess.InputError as e:
    raise UserError(str(e)) from None

  def compute():
    method = matting.resolve(s.matting, photo.alpha, s.matting_model)
    session = matting.rembg_session(s.matting_model) if method == 'rembg' else None
    alpha = matting.matte(photo.rgb, method, alpha=photo.alpha, session=session, name=str(path))
    rgba = preprocess.prepare_rgba(Image.fromarray(matting.cutout(photo.rgb, alpha), 'RGBA'), int(s.crop_size), 256)
    atomic.write_png(folder / INPUT_RGBA, np.asarray(rgba))
    return {'matting': method, 'notes': list(photo.notes), 'foreground_fraction': float((alpha > 0.5).mean())}
  try:
    return stages.cached(folder, 'prepare', {'input': digest.file_sha256(path), 'matting': s.matting,
                                             'matting_model': s.matting_model, 'crop_size': int(s.crop_size)},
                         [INPUT_RGBA], compute)
  except (matting.MattingError, preprocess.InputError) as e:
    raise UserError(str(e)) from None


def input_view(folder: Path, size: int):
  """The prepared input as (rgb [size, size, 3] float in [0, 1] on white, mask [size, size] float)."""
  rgba = Image.open(folder / INPUT_RGBA).convert('RGBA')
  if rgba.size != (size, size):
    rgba = rgba.resize((size, size), Image.Resampling.BICUBIC)
  a = np.asarray(rgba, np.float32) / 255
  return a[..., :3] * a[..., 3:] + 1 - a[..., 3:], a[..., 3]


def sample(s: ImageTo3DSettings, round_dir: Path, elevation: float, convert_ckpt,
           hooks: Hooks = NO_HOOKS) -> List[Path]:
  """N instances at `elevation` (the sampler skips instances already on disk with the same settings)."""
  ss = s.round_settings(elevation, round_dir)
  t0 = time.time()
  manifests = sampling.run(ss, convert_ckpt=convert_ckpt, model=hooks.model, listener=hooks.on_sample)
  folder = round_dir / 'samples' / Path(INPUT_RGBA).stem
  if Path(INPUT_RGBA).stem not in manifests:
    raise UserError(f'{folder}: sampling did not finish every instance')
  strips = [folder / f'{k}.png' for k in manifests[Path(INPUT_RGBA).stem]['instances']]
  logging.info('sampled %d instances at %.1f deg in %.0f s', len(strips), elevation, time.time() - t0)
  return strips[:int(s.sample.sample_num)]


def _views_256(strip: Path) -> np.ndarray:
  """[16, 256, 256, 3] uint8 of a strip (views resized to 256 px if the model made smaller ones)."""
  views = split_strip(np.asarray(Image.open(strip).convert('RGB')))
  if views.shape[1] != VIEW_SIZE:
    views = np.stack([np.asarray(Image.fromarray(v).resize((VIEW_SIZE, VIEW_SIZE), Image.Resampling.BICUBIC))
                      for v in views])
  return views


def select(s: ImageTo3DSettings, folder: Path, round_dir: Path, strips: List[Path]) -> Dict[str, Any]:
  """Scores every instance (masks as NeuS makes them), keeps the best (or `select`) as round_dir/views.png."""

  def compute():
    rgb_in, mask_in = input_view(folder, VIEW_SIZE)
    session = matting.rembg_session(s.neus.matting_model) if s.neus.matting_model else None
    scores = []
    for k, strip in enumerate(strips):
      try:
        v = neus_data.views_from_arrays(_views_256(strip), None, str(s.neus.matting), str(s.neus.matting_model),
                                        session, where=str(strip))
      except neus_data.ViewsError as e:
        scores.append({'instance': k, 'total': float('-inf'), 'error': str(e)})
        continue
      scores.append({'instance': k, **scoring.score_instance(v.rgb, v.mask, rgb_in, mask_in)})
    totals = [sc['total'] for sc in scores]
    if int(s.select) >= 0:
      chosen = int(s.select)
    elif all(t == float('-inf') for t in totals):
      raise UserError(f'{round_dir}: no instance has a usable object mask ({scores[0].get("error")})')
    else:
      chosen = int(np.argmax(totals))
    atomic.write_png(round_dir / 'views.png', join_strip(_views_256(strips[chosen])))
    return {'chosen': chosen, 'by': 'score' if int(s.select) < 0 else 'select', 'scores': scores}

  rel = round_dir.relative_to(folder)
  identity = {'strips': stages.file_identity(folder, strips), 'input': stages.file_identity(folder, [folder / INPUT_RGBA]),
              'select': int(s.select), 'matting': s.neus.matting, 'matting_model': s.neus.matting_model}
  return stages.cached(folder, f'select_{rel.name}', identity, [str(rel / 'views.png')], compute)


def reconstruct(s: ImageTo3DSettings, round_dir: Path, hooks: Hooks = NO_HOOKS) -> Dict[str, Any]:
  """NeuS on the chosen views (resumes from its checkpoints; refuses another input's outputs)."""
  return neus_pipeline.run(s.neus_settings(round_dir), on_log=hooks.on_neus)


def estimate_elevation(s: ImageTo3DSettings, folder: Path, round_dir: Path) -> Dict[str, Any]:
  mesh_path = round_dir / 'neus' / 'mesh.ply'

  def compute():
    _, mask = input_view(folder, VIEW_SIZE)
    mesh = geometry.load_mesh(mesh_path)
    est = elevation_lib.estimate(mask > 0.5, mesh.vertices, mesh.faces)
    deg = float(np.clip(round(float(est.elevation_deg), 1), *ELEVATION_RANGE))
    atomic.write_json(folder / 'elevation.json', {'estimate_deg': deg, 'from_mesh': str(mesh_path.relative_to(folder)),
                                                  'estimate': est.to_json()})
    return {'estimate_deg': deg}

  identity = {'files': stages.file_identity(folder, [folder / INPUT_RGBA, mesh_path])}
  return stages.cached(folder, 'elevation', identity, ['elevation.json'], compute)


def export_stage(s: ImageTo3DSettings, folder: Path, round_dir: Path) -> Dict[str, Any]:
  mesh_path, views_path = round_dir / 'neus' / 'mesh.ply', round_dir / 'views.png'
  outputs = ['mesh.glb', 'turntable.gif', 'preview.png'] + (['mesh.obj'] if s.texture else [])

  def compute():
    m = trimesh.load(mesh_path, force='mesh', process=False)
    colors = None
    if getattr(m.visual, 'vertex_colors', None) is not None and len(m.visual.vertex_colors) == len(m.vertices):
      colors = np.asarray(m.visual.vertex_colors)[:, :3].astype(np.float32) / 255
    if len(m.faces) == 0:
      raise UserError(f'{mesh_path}: the reconstruction has no triangles')
    v = neus_data.load_views(views_path, matting=str(s.neus.matting), model=str(s.neus.matting_model))
    Ks, poses, _ = default_cameras(NUM_VIEWS, VIEW_SIZE)
    written = write.export_asset(folder, np.asarray(m.vertices), np.asarray(m.faces), colors,
                                 views=(v.rgb, v.mask), cameras=(Ks, poses), texture=bool(s.texture),
                                 texture_size=int(s.texture_size), keep_arrays=True)
    arrays = written.pop('arrays')
    written['preview'] = preview.write_preview(folder, frames=int(s.preview_frames), **arrays)
    return _relative(written, folder)

  identity = {'files': stages.file_identity(folder, [mesh_path, views_path]), 'texture': bool(s.texture),
              'texture_size': int(s.texture_size), 'preview_frames': int(s.preview_frames),
              'matting': s.neus.matting}
  try:
    return stages.cached(folder, 'export', identity, outputs, compute)
  except geometry.MeshError as e:
    raise UserError(str(e)) from None


def _relative(x, folder: Path):
  """A result with its paths as strings relative to the input's folder (JSON for the stage record)."""
  if isinstance(x, dict):
    return {k: _relative(v, folder) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_relative(v, folder) for v in x]
  if isinstance(x, Path):
    return str(x.relative_to(folder)) if x.is_relative_to(folder) else str(x)
  return x


# ----------------------------------------------------------------------------------------------- the run

def _tag(elevation: float) -> str:
  return f'e{elevation:+.1f}'


def round_dir_of(folder: Path, elevation: float) -> Path:
  return folder / 'rounds' / _tag(elevation)


def strips_of(s: ImageTo3DSettings, folder: Path, elevation: float) -> List[Path]:
  """The instance strips of a sampled round (as `sample` returned them)."""
  samples = round_dir_of(folder, elevation) / 'samples' / Path(INPUT_RGBA).stem
  return [samples / f'{k}.png' for k in range(int(s.sample.sample_num))]


def run_round(s: ImageTo3DSettings, folder: Path, elevation: float, convert_ckpt, seconds: dict,
              hooks: Hooks = NO_HOOKS, neus: bool = True) -> Dict[str, Any]:
  """sample -> select (-> neus) at one elevation; returns the round's record for report.json."""
  round_dir = round_dir_of(folder, elevation)
  t0 = time.time()
  strips = sample(s, round_dir, elevation, convert_ckpt, hooks)
  seconds[f'sample {_tag(elevation)}'] = time.time() - t0
  sel = select(s, folder, round_dir, strips)
  seconds[f'select {_tag(elevation)}'] = sel['seconds']
  record = {'elevation_deg': elevation, 'folder': str(round_dir.relative_to(folder)), 'chosen': sel['chosen'],
            'chosen_by': sel['by'], 'scores': sel['scores']}
  return neus_round(s, folder, record, seconds, hooks) if neus else record


def neus_round(s: ImageTo3DSettings, folder: Path, record: Dict[str, Any], seconds: dict,
               hooks: Hooks = NO_HOOKS) -> Dict[str, Any]:
  """NeuS on a round's chosen views; the round's record with its 'neus' entry."""
  t0 = time.time()
  metrics = reconstruct(s, folder / record['folder'], hooks)
  seconds[f'neus {_tag(record["elevation_deg"])}'] = time.time() - t0
  return dict(record, neus={'steps': metrics.get('steps'), 'mesh': metrics.get('mesh'),
                            'seconds': metrics.get('seconds')})


def views_rounds(s: ImageTo3DSettings, folder: Path, convert_ckpt, seconds: dict, hooks: Hooks = NO_HOOKS):
  """The instances at the final elevation, scored: ([round records], elevation record). With elevation 'auto',
  the prior's round is reconstructed (the estimate needs its mesh); the final round is not yet."""
  if s.elevation != 'auto':
    final = s.elevation_deg()
    return [run_round(s, folder, final, convert_ckpt, seconds, hooks, neus=False)], {'mode': s.elevation,
                                                                                    'used_deg': final}
  prior = float(s.elevation_prior)
  rounds = [run_round(s, folder, prior, convert_ckpt, seconds, hooks)]
  est = estimate_elevation(s, folder, round_dir_of(folder, prior))
  seconds['elevation'] = est['seconds']
  info = {'mode': 'auto', 'prior_deg': prior, 'estimate_deg': est['estimate_deg'],
          'tolerance_deg': float(s.elevation_tolerance), 'used_deg': prior}
  if abs(est['estimate_deg'] - prior) > float(s.elevation_tolerance):
    info['used_deg'] = est['estimate_deg']
    print(f'{folder.name}: elevation estimated at {info["used_deg"]:.1f} deg (prior {prior:.1f}): sampling again there')
    rounds.append(run_round(s, folder, info['used_deg'], convert_ckpt, seconds, hooks, neus=False))
  return rounds, info


def choose(s: ImageTo3DSettings, folder: Path, record: Dict[str, Any], seconds: dict) -> Tuple[Dict[str, Any], bool]:
  """The round's views.png made again for s.select (an instance picked by hand); returns the round's record
  and whether its views changed (then its NeuS result is another input's: redone with overwrite)."""
  round_dir = folder / record['folder']
  views = round_dir / 'views.png'
  before = digest.file_sha256(views) if views.is_file() else None
  sel = select(s, folder, round_dir, strips_of(s, folder, record['elevation_deg']))
  seconds[f'select {_tag(record["elevation_deg"])}'] = sel['seconds']
  record = dict(record, chosen=sel['chosen'], chosen_by=sel['by'], scores=sel['scores'])
  return record, before is not None and digest.file_sha256(views) != before


def asset(s: ImageTo3DSettings, path: Path, folder: Path, prep: Dict[str, Any], rounds: List[Dict[str, Any]],
          elevation_info: Dict[str, Any], seconds: dict, t_start: float, hooks: Hooks = NO_HOOKS) -> Dict[str, Any]:
  """The final round reconstructed (unless done), exported, and report.json written; returns the report."""
  if 'neus' not in rounds[-1]:
    rounds = rounds[:-1] + [neus_round(s, folder, rounds[-1], seconds, hooks)]
  round_dir = folder / rounds[-1]['folder']
  ex = export_stage(s, folder, round_dir)
  seconds['export'] = ex['seconds']
  report = {
      'input': str(path), 'input_sha256': digest.file_sha256(path), 'prepare': prep,
      'weights': 'random (a demo: the views and the mesh show nothing)' if s.checkpoint == 'random' else s.checkpoint,
      'elevation': elevation_info, 'rounds': rounds, 'final_round': str(round_dir.relative_to(folder)),
      'outputs': {k: v for k, v in ex.items() if k not in ('seconds', 'skipped')},
      'seconds': dict(seconds, total=time.time() - t_start),
      'settings': settings_lib.as_json(s)}
  atomic.write_json(folder / REPORT, report)
  return report


def run_one(s: ImageTo3DSettings, path: Path, folder: Path, convert_ckpt=None) -> Dict[str, Any]:
  t_start = time.time()
  seconds: Dict[str, float] = {}
  prep = prepare(s, path, folder)
  seconds['prepare'] = prep['seconds']
  rounds, elevation_info = views_rounds(s, folder, convert_ckpt, seconds)
  return asset(s, path, folder, prep, rounds, elevation_info, seconds, t_start)


def run(s: ImageTo3DSettings, convert_ckpt: Optional[Callable] = None) -> Dict[str, dict]:
  """Every input image to OUTPUT/<name>/; returns {name: report}."""
  s.validate()
  try:
    files = preprocess.image_files(s.input)
  except preprocess.InputError as e:
    raise UserError(str(e)) from None
  out = atomic.require_writable(s.output_dir)
  # the weights before any stage writes: a missing or unreadable checkpoint is one line, and nothing is written
  sampling.resolve_weights(s.round_settings(float(s.elevation_prior), out / 'x' / 'rounds' / 'x'), convert_ckpt)
  if s.checkpoint == 'random':
    print('RANDOM WEIGHTS: this run checks the pipeline; its views and mesh show nothing (set --config.checkpoint)')
  reports = {}
  for path in files:
    reports[path.stem] = run_one(s, Path(path), out / path.stem, convert_ckpt)
  return reports
