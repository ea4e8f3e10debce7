"""`python -m hv_jax.reconstruct`: 16 views -> NeuS -> DIR/mesh.ply + mesh.glb + DIR/metrics.json.

Order of work, so that bad input loses nothing and leaves nothing partial:
1. settings and input are checked (ReconstructSettings.validate; ViewsError -> UserError, one line): every
   number of the settings finite and in range; with gt_mesh, the GT mesh is read and its object's rotation
   known (gt_name, default the input folder's name, or the folder holding the input strip, must be a
   GSO-eval object unless `gt_rotation` is given: an unknown name is not silently rotation 0);
2. a finished DIR (metrics.json + mesh.ply) is reused only if it was made from the same input (sha256 of the
   strip or of the 16 views), GT mesh (sha256) and settings (`identity` in metrics.json: the settings without
   input/output_dir/progress/overwrite/gt_mesh/gt_name/save_every/mesh_slab, which do not change the result;
   a record of an older version, whose config files named only some fields, is compared by value:
   `resolved_identity`); otherwise one line refuses (another output_dir, or --config.overwrite=True to redo it);
3. the output folder is created and tested for writing; training runs with orbax checkpoints in
   DIR/checkpoints, which a rerun resumes only when DIR/checkpoints/identity.json says they were made from the
   same input and training settings (train.fit); a loss or gradient that is not finite stops the run with one
   line (the diverged checkpoints are removed); a run that fails before writing any result or checkpoint
   removes the folders it created;
4. the mesh and metrics are written atomically (temporary file + rename), mesh first, metrics last: a
   finished output is one with metrics.json. A rerun of a finished output does nothing unless overwrite,
   except writing the export files (`export_files`) that it lacks (an output of a version before mesh.glb)
   from its mesh.ply, so that exit 0 always means every output is there and matches the settings.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax

from hv_jax import atomic, checks, digest, optional
from hv_jax import settings as settings_lib
from hv_jax.data import matting
from hv_jax.data.views import VIEW_FILES
from hv_jax.errors import UserError
from hv_jax.export import write
from hv_jax.metrics import geometry
from hv_jax.neus import data as neus_data
from hv_jax.neus import fields
from hv_jax.neus import mesh as neus_mesh
from hv_jax.neus import train
from hv_jax.neus.fields import NeuSConfig
from hv_jax.neus.train import LoopConfig, TrainConfig


@dataclasses.dataclass(frozen=True)
class ReconstructSettings:
  """Every setting of a reconstruction (`python -m hv_jax.reconstruct`; configs/neus*.py start from these).

  The defaults are the original's (HarmonyView configs/neus.yaml + NeuSRenderer): an 8x256 SDF MLP, 64 + 64
  samples per ray, 3584 + 512 rays per step, 2000 AdamW steps, a 512^3 mesh.
  """
  input: str = ''                # 256x4096 strip (16 views) or a folder 000.png ... 015.png
  output_dir: str = 'outputs/neus'
  seed: int = 6033
  progress: bool = True
  overwrite: bool = False        # a finished output (mesh.ply + metrics.json) is kept unless this is set
  neus: NeuSConfig = NeuSConfig()      # NeuSRenderer: fields, sampling, loss weights (hv_jax.neus.fields)
  train: TrainConfig = TrainConfig()   # RendererTrainer / configure_optimizers (hv_jax.neus.train)
  batch_num: int = 3584          # train_batch_num: random rays per step
  fg_num: int = 512              # train_batch_fg_num: pseudo-foreground rays per step
  save_every: int = 500          # checkpoint interval (steps); a rerun resumes from the last one
  log_every: int = 10
  mesh_resolution: int = 512     # marching-cubes grid per side
  mesh_slab: int = 8             # x-planes of the SDF grid per jitted call (memory bound)
  vertex_colors: bool = True
  mesh_floor: str = 'none'       # 'mirror_top': cut the unseen fill below the object at -top (hv_jax.neus.mesh)
  gt_mesh: str = ''              # a GT mesh: metrics.json gets Chamfer / volume IoU (hv_jax.metrics.geometry)
  gt_name: str = ''              # GSO-eval object name, selects the GT rotation (default: the input's folder name)
  gt_rotation: Optional[float] = None   # degrees, for a GT mesh of another object
  matting: str = 'auto'          # masks: auto (the views' alpha if usable, else rembg if matting_model, else plain) | alpha | plain | rembg | white (the original's rule)
  matting_model: str = ''        # rembg model file (u2net.onnx, isnet-general-use.onnx, ...); nothing is downloaded
  texture: bool = False          # bake a texture from the input views: textured mesh.glb + mesh.obj (docs/export.md)
  texture_size: int = 1024       # texture side in texels (with texture=True)

  def loop_config(self) -> LoopConfig:
    return LoopConfig(batch_num=int(self.batch_num), fg_num=int(self.fg_num), seed=int(self.seed),
                            save_every=int(self.save_every), log_every=int(self.log_every))

  def validate(self) -> None:
    """Every number finite, counts integral, ranges of what NeuS divides by, takes logs of or counts with:
    one UserError line naming the field (--config.<field>)."""
    try:
      _finite_numbers(settings_lib.as_json(self))
      for name in ('batch_num', 'fg_num', 'seed', 'save_every', 'log_every', 'mesh_resolution', 'mesh_slab',
                   'texture_size'):
        v = getattr(self, name)
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
          raise ValueError(f'--config.{name}={v!r}: must be an integer')
      cfg, tc = self.neus, self.train
      if cfg.color.d_feature != cfg.sdf.d_out - 1:
        raise ValueError(f'--config.neus.color.d_feature={cfg.color.d_feature}: must be --config.neus.sdf.d_out - 1 = '
                         f'{cfg.sdf.d_out - 1}')
      if tc.use_warm_up and tc.total_steps // tc.decay_interval == 0:
        raise ValueError(f'--config.train.total_steps={tc.total_steps}: must be >= --config.train.decay_interval='
                         f'{tc.decay_interval} (the schedule decays every decay_interval steps; or '
                         '--config.train.use_warm_up=False)')
      for name, lo in (('batch_num', 1), ('fg_num', 0), ('mesh_resolution', 2)):
        if int(getattr(self, name)) < lo:
          raise ValueError(f'--config.{name}={getattr(self, name)}: must be >= {lo}')
      if not 8 <= int(self.texture_size) <= 8192:
        raise ValueError(f'--config.texture_size={self.texture_size}: must be in [8, 8192]')
      if str(self.mesh_floor) not in neus_mesh.FLOORS:
        raise ValueError(f'--config.mesh_floor={self.mesh_floor!r}: expected one of {neus_mesh.FLOORS}')
      matting.check_settings(str(self.matting), str(self.matting_model), methods=neus_data.MATTING)
      _check_ranges(self)
    except (TypeError, ValueError) as e:
      raise UserError(str(e)) from None

  def identity(self) -> dict:
    """The settings a finished output depends on (all but NOT_IN_IDENTITY; texture_size only with texture),
    as JSON values."""
    skip = NOT_IN_IDENTITY + (() if self.texture else ('texture_size',))
    return {k: v for k, v in settings_lib.as_json(self).items() if k not in skip}


def _finite_numbers(x, prefix: str = '') -> None:
  """ValueError naming the first NaN / infinite number anywhere in the (plain) settings."""
  if isinstance(x, dict):
    for k, v in x.items():
      _finite_numbers(v, f'{prefix}{k}.')
  elif isinstance(x, (list, tuple)):
    for v in x:
      _finite_numbers(v, prefix)
  elif isinstance(x, float) and not math.isfinite(x):
    raise ValueError(f'--config.{prefix[:-1]}={x}: must be a finite number')


def _check_ranges(s: ReconstructSettings) -> None:
  """Ranges of the numbers NeuS divides by, takes logs of, or counts with (ValueError naming the field)."""
  cfg, tc = s.neus, s.train
  checks = [
      ('neus.n_samples', cfg.n_samples, cfg.n_samples >= 1, '>= 1'),
      ('neus.n_importance', cfg.n_importance, cfg.n_importance >= 0, '>= 0'),
      ('neus.up_sample_steps', cfg.up_sample_steps,
       cfg.up_sample_steps >= 1 and cfg.n_importance % cfg.up_sample_steps == 0,
       f'>= 1 and divide neus.n_importance={cfg.n_importance}'),
      ('neus.anneal_end', cfg.anneal_end, cfg.anneal_end != 0, '> 0 (or < 0: no annealing)'),
      ('neus.default_radius', cfg.default_radius, cfg.default_radius > 0, '> 0'),
      ('neus.default_side_length', cfg.default_side_length, cfg.default_side_length > 0, '> 0'),
      ('neus.rgb_loss', cfg.rgb_loss, cfg.rgb_loss in ('soft_l1', 'mse'), "'soft_l1' or 'mse'"),
      ('train.base_lr', tc.base_lr, tc.base_lr > 0, '> 0'),
      ('train.total_steps', tc.total_steps, tc.total_steps >= 1, '>= 1'),
      ('train.warm_up_steps', tc.warm_up_steps, tc.warm_up_steps >= 0, '>= 0'),
      ('train.weight_decay', tc.weight_decay, tc.weight_decay >= 0, '>= 0'),
      ('train.b1', tc.b1, 0 <= tc.b1 < 1, 'in [0, 1)'),
      ('train.b2', tc.b2, 0 <= tc.b2 < 1, 'in [0, 1)'),
      ('train.eps', tc.eps, tc.eps > 0, '> 0'),
      ('train.grid_lr_scale', tc.grid_lr_scale, tc.grid_lr_scale > 0, '> 0'),
      ('train.decay_interval', tc.decay_interval, tc.decay_interval >= 1, '>= 1'),
      ('train.chunks', tc.chunks, tc.chunks >= 1, '>= 1'),
      ('seed', s.seed, 0 <= s.seed < 2 ** 32, 'in [0, 2^32 - 1]'),
      ('save_every', s.save_every, s.save_every >= 1, '>= 1'),
      ('log_every', s.log_every, s.log_every >= 1, '>= 1'),
      ('mesh_slab', int(s.mesh_slab), int(s.mesh_slab) >= 1, '>= 1'),
  ]
  for name in ('lambda_rgb_loss', 'lambda_mask_loss', 'lambda_eikonal_loss'):
    checks.append((f'neus.{name}', getattr(cfg, name), getattr(cfg, name) >= 0, '>= 0'))
  # the networks' widths: what the renderer feeds them and reads from them is fixed (fields.color_forward:
  # points, reflected view direction and normal, 3 each, then the SDF's features; RGB out)
  sdf, color = cfg.sdf, cfg.color
  checks += [('neus.color.d_in', color.d_in, color.d_in == 9, '9 (point, view direction and normal, 3 each)'),
             ('neus.color.d_out', color.d_out, color.d_out == 3, '3 (RGB)'),
             ('neus.color.d_hidden', color.d_hidden, color.d_hidden >= 1, '>= 1'),
             ('neus.color.n_layers', color.n_layers, color.n_layers >= 1, '>= 1'),
             ('neus.color.multires_view', color.multires_view, color.multires_view >= 0, '>= 0'),
             ('neus.sdf.d_out', sdf.d_out, sdf.d_out >= 2, '>= 2 (the SDF, then the features)'),
             ('neus.sdf.d_hidden', sdf.d_hidden, sdf.d_hidden >= 1, '>= 1'),
             ('neus.sdf.n_layers', sdf.n_layers, sdf.n_layers >= 1, '>= 1')]
  if isinstance(cfg.sdf, fields.GridSDFConfig):
    g = cfg.sdf
    checks += [('neus.sdf.bound', g.bound, g.bound > 0, '> 0'), ('neus.sdf.radius', g.radius, g.radius > 0, '> 0'),
               ('neus.sdf.features', g.features, g.features >= 1, '>= 1'),
               ('neus.sdf.resolutions', g.resolutions, len(g.resolutions) >= 1 and min(g.resolutions) >= 2,
                'a non-empty list of sizes >= 2')]
  else:
    checks += [('neus.sdf.scale', cfg.sdf.scale, cfg.sdf.scale > 0, '> 0'),
               ('neus.sdf.d_in', sdf.d_in, sdf.d_in == 3, '3 (a point)'),
               ('neus.sdf.multires', sdf.multires, sdf.multires >= 0, '>= 0')]
  for name, value, ok, want in checks:
    if not ok:
      raise ValueError(f'--config.{name}={value!r}: must be {want}')
  try:
    sdf.layer_shapes()
  except ValueError as e:     # an MLP whose skip layer's input is wider than d_hidden
    raise ValueError(f'--config.neus.sdf: {e}') from None


def _prepare_output(out: Path) -> List[Path]:
  """Creates `out` and tests it for writing; returns the folders this created (outermost first)."""
  atomic.require_writable(out)
  return atomic.make_dirs(out)


def _remove_unless_written(out: Path, created: List[Path], ckpt: Path, drop_checkpoints: bool = False) -> None:
  """After a failed run: `drop_checkpoints` removes the checkpoint folder (a diverged state); then, if no
  result and no checkpoint is left, the checkpoint folder and the folders this run created are removed, so
  that a failure leaves nothing behind."""
  if drop_checkpoints:
    shutil.rmtree(ckpt, ignore_errors=True)
  ident = ckpt / train.IDENTITY_FILE
  if any(p.is_file() and p != ident for p in out.rglob('*')):
    return
  shutil.rmtree(ckpt, ignore_errors=True)
  atomic.remove_empty_dirs(created)


def input_hashes(path) -> Dict[str, str]:
  """sha256 of the input strip ({'strip': ...}) or of each of the 16 views of a folder ({'000.png': ...})."""
  path = Path(path)
  if path.is_dir():
    return {name: digest.file_sha256(path / name) for name in VIEW_FILES}
  return {'strip': digest.file_sha256(path)}


# config fields that do not change the result: a finished output made with other values is still valid
NOT_IN_IDENTITY = ('input', 'output_dir', 'progress', 'overwrite', 'gt_mesh', 'gt_name', 'gt_rotation', 'save_every',
                   'mesh_slab', 'matting', 'matting_model')
# the GT's name and rotation are in the identity as gt_name, gt_rotation_deg; the masks as `masks` (mask_identity)


def mask_identity(views, s: 'ReconstructSettings') -> dict:
  """What the masks were made with, for identities: nothing for the views' own alpha (as results of earlier
  versions record it), else the method (and the rembg model file's hash): a result or checkpoint made with
  other masks is never reused."""
  if views.mask_source == 'alpha':
    return {}
  masks = {'method': views.mask_source}
  if views.mask_source == 'rembg':
    masks['model_sha256'] = digest.file_sha256(os.path.expanduser(s.matting_model))
  return {'masks': masks}


def check_gt(s: ReconstructSettings, prefix: str = '') -> Tuple[str, Optional[str], Optional[float]]:
  """(gt_mesh, its object name, its rotation in degrees) of the settings, checked before any work: the mesh
  is read, the object's rotation known (or given); ('', None, None) without a GT mesh. `prefix` is where the
  settings sit in a bigger config ('neus.' in hv_jax.image_to_3d), for the messages."""
  gt_mesh = str(s.gt_mesh or '')
  gt_name, rotation = None, None
  gt_rotation = s.gt_rotation
  if gt_rotation is not None and not gt_mesh:
    raise UserError(f'--config.{prefix}gt_rotation is the GT mesh rotation: it needs --config.{prefix}gt_mesh')
  if s.gt_name and not gt_mesh:
    raise UserError(f"--config.{prefix}gt_name names the GT mesh's object: it needs --config.{prefix}gt_mesh")
  if gt_mesh:
    if not os.path.isfile(gt_mesh):
      raise UserError(f'{prefix}gt_mesh {gt_mesh}: no such file')
    gt_name = str(s.gt_name or default_gt_name(s.input))
    if gt_rotation is None:
      try:
        rotation = geometry.gt_rotation_angle(
            gt_name, hint=f'set --config.{prefix}gt_name=OBJECT, or --config.{prefix}gt_rotation=0 if the GT mesh '
                          'needs no rotation')
      except geometry.UnknownObjectError as e:
        raise UserError(f'{prefix}gt_name: {e}') from None
    else:
      rotation = float(gt_rotation)
    try:
      geometry.load_mesh(gt_mesh)
    except geometry.MeshError as e:
      raise UserError(f'{prefix}gt_mesh {e}') from None
  return gt_mesh, gt_name, rotation


def default_gt_name(input_path) -> str:
  """The object name of an input: a folder's name, or the name of the folder holding a strip."""
  p = Path(input_path).absolute()
  return p.name if p.is_dir() else p.parent.name


def _names(diff: List[str]) -> str:
  """Readable, deduplicated names of differing identity entries (config.train.base_lr -> train.base_lr)."""
  out = []
  for d in diff:
    for prefix, name in (('config.', None), ('input_sha256', 'input'), ('data.input_sha256', 'input'),
                         ('gt_mesh_sha256', 'gt_mesh'), ('gt_rotation_deg', 'GT rotation'), ('loop.', None)):
      if d.startswith(prefix):
        d = name or d[len(prefix):]
        break
    if d not in out:
      out.append(d)
  return ', '.join(out[:4]) + (f' and {len(out) - 4} more' if len(out) > 4 else '')


def _json_roundtrip(x):
  return json.loads(json.dumps(x))


def resolved_identity(stored: dict) -> dict:
  """A stored identity with its `config` read through ReconstructSettings: a metrics.json of a version whose
  config files named only some fields (`neus.sdf` as {kind, d_hidden, ...}) records the same settings as
  today's full record when the values are the same. A config that no longer reads is kept as it is (and so
  differs)."""
  config = stored.get('config')
  if not isinstance(config, dict):
    return stored
  try:
    full = settings_lib.from_dict(ReconstructSettings, config).identity()
  except (settings_lib.SettingsError, TypeError, ValueError):
    return stored
  return {**stored, 'config': full}


class _Diverged(Exception):
  pass


def run(s: ReconstructSettings, on_log: Optional[Callable[[dict], None]] = None) -> Dict[str, Any]:
  """Runs one reconstruction; returns the metrics dict (also in DIR/metrics.json).

  s.gt_rotation (degrees, None by default): the GT mesh's rotation for an object that is not a GSO-eval
  object; by default it is looked up by gt_name. on_log(row) sees each training log row ({'step', losses}, every
  log_every steps): a front end's progress (hv_jax.app); an exception it raises stops the run, checkpoints kept."""
  s.validate()      # every setting first, then the input
  cfg, tc, lc = s.neus, s.train, s.loop_config()
  if not s.input:
    raise UserError('no input: pass --config.input=PATH (a 256x4096 strip or a folder of 16 views)')
  try:
    views = neus_data.load_views(s.input, matting=str(s.matting), model=str(s.matting_model))
  except neus_data.ViewsError as e:
    raise UserError(str(e)) from None
  gt_mesh, gt_name, rotation = check_gt(s)

  inputs = input_hashes(s.input)
  identity = _json_roundtrip({
      'input_sha256': inputs, 'gt_mesh_sha256': digest.file_sha256(gt_mesh) if gt_mesh else None,
      'gt_name': gt_name, 'gt_rotation_deg': rotation, 'config': s.identity(), **mask_identity(views, s)})

  out = Path(s.output_dir)
  metrics_path, mesh_path = out / 'metrics.json', out / 'mesh.ply'
  if metrics_path.exists() and mesh_path.exists() and not s.overwrite:
    try:
      stored = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as e:
      raise UserError(f'{metrics_path} is not readable ({e}): use another output_dir or '
                      '--config.overwrite=True') from None
    if not isinstance(stored.get('identity'), dict):
      raise UserError(f'{out} holds a reconstruction of an older version, without a record of its input and '
                      'settings: use another output_dir or --config.overwrite=True')
    diff = checks.differing_keys(resolved_identity(stored['identity']), identity)
    if diff:
      raise UserError(f'{out} holds a reconstruction of another input/settings ({_names(diff)}): use another '
                      'output_dir or --config.overwrite=True')
    missing = [name for name in export_files(s) if not (out / name).is_file()]
    if missing:      # an output of a version before the export files: add them from its mesh.ply
      stored['export'] = _export_from_ply(s, views, out)
      atomic.write_json(metrics_path, stored)
      print(f'{out}: already reconstructed; wrote the missing {", ".join(missing)} from mesh.ply')
      return stored
    print(f'{out}: already reconstructed from the same input and settings (metrics.json); '
          '--config.overwrite=True redoes it')
    return stored
  created = _prepare_output(out)
  ckpt = out / 'checkpoints'
  if s.overwrite:      # the old result is no longer a finished output; its checkpoints are not resumed
    metrics_path.unlink(missing_ok=True)
    if ckpt.exists():
      shutil.rmtree(ckpt)

  print(f'neus: {s.input} ({views.mask_source} masks), {tc.total_steps} steps of '
        f'{lc.batch_num}+{lc.fg_num} rays, {type(cfg.sdf).__name__}, on {jax.devices()[0].platform}')

  def check_finite(row):
    bad = [k for k, v in row.items() if not math.isfinite(v)]
    if bad:
      k = 'loss' if 'loss' in bad else bad[0]
      raise _Diverged(f"training diverged by step {row['step']} ({k} {row[k]}): lower --config.train.base_lr "
                      "(this run's checkpoints were removed)")
    if on_log is not None:
      on_log(row)

  t0 = time.time()
  try:
    data = neus_data.ray_dataset(views)
    try:
      params, history = train.fit(data, cfg, tc, lc, checkpoint_dir=str(ckpt), progress=s.progress,
                                  on_log=check_finite,
                                  data_identity={'input_sha256': inputs, **mask_identity(views, s)})
    except train.CheckpointMismatch as e:
      raise UserError(f'{e}: use another output_dir or --config.overwrite=True') from None
    t_train = time.time() - t0
    metrics = _mesh_and_metrics(s, views, params, history, out, gt_mesh, gt_name, rotation)
  except _Diverged as e:
    _remove_unless_written(out, created, ckpt, drop_checkpoints=True)
    raise UserError(str(e)) from None
  except BaseException:
    _remove_unless_written(out, created, ckpt)
    raise
  metrics['seconds']['train'] = t_train
  metrics['seconds']['total'] = time.time() - t0
  metrics['identity'] = identity
  atomic.write_json(metrics_path, metrics)
  return metrics


def _mesh_and_metrics(s: ReconstructSettings, views, params, history, out: Path, gt_mesh: str, gt_name, rotation):
  cfg = s.neus
  mesh_path = out / 'mesh.ply'
  t1 = time.time()
  floor = str(s.mesh_floor)
  grid = neus_mesh.sdf_grid(params, cfg, int(s.mesh_resolution), cfg.default_side_length, int(s.mesh_slab),
                            s.progress)
  vertices, faces, colors = neus_mesh.mesh_from_grid(params, cfg, grid, floor, bool(s.vertex_colors))
  unfloored = None      # with a GT mesh, the mesh before the floor is evaluated too: the prior's effect on record
  if gt_mesh and floor != 'none':
    unfloored = neus_mesh.mesh_from_grid(params, cfg, grid, 'none', colors=False)[:2]
  if len(faces) == 0:
    raise UserError('the SDF has no zero crossing inside the cube: training did not find a surface')
  if unfloored is not None:
    neus_mesh.write_ply(out / 'mesh_nofloor.ply', *unfloored)
  neus_mesh.write_ply(mesh_path, vertices, faces, colors)
  t_mesh = time.time() - t1
  exported = _export(s, views, out, vertices, faces, colors)

  final = history[-1] if history else {}
  metrics = {'input': str(s.input), 'mask_source': views.mask_source,
             'steps': s.train.total_steps, 'final': final, 'history': history,
             'seconds': {'train': None, 'mesh': t_mesh, 'export': sum(exported['seconds'].values())},
             'export': exported,
             'mesh': {'vertices': int(len(vertices)), 'faces': int(len(faces)),
                      'resolution': int(s.mesh_resolution), 'floor': floor},
             'config': settings_lib.as_json(s)}
  if gt_mesh:
    t2 = time.time()
    try:
      metrics['geometry'] = geometry.evaluate(mesh_path, gt_mesh, gt_name, rotation=rotation)
      metrics['geometry'].update(name=gt_name, rotation_deg=rotation)
      if unfloored is not None:
        metrics['geometry_nofloor'] = geometry.evaluate(out / 'mesh_nofloor.ply', gt_mesh, gt_name, rotation=rotation)
    except geometry.MeshError as e:
      raise UserError(f'evaluating {mesh_path}: {e}') from None
    metrics['seconds']['evaluate'] = time.time() - t2
  return metrics


TEXTURED_FILES = ('mesh.obj', 'mesh.mtl', 'mesh_texture.png')


def export_files(s: ReconstructSettings) -> List[str]:
  """The files beside mesh.ply that other tools open (hv_jax.export): mesh.glb, and the textured OBJ set."""
  return ['mesh.glb'] + (list(TEXTURED_FILES) if s.texture else [])


def _export(s: ReconstructSettings, views, out: Path, vertices, faces, colors) -> dict:
  """mesh.glb (vertex colours, or with s.texture a texture baked from the input views at the NeuS cameras)
  and, with s.texture, mesh.obj + .mtl + PNG; textured files of an earlier setting are removed, so the folder
  holds exactly what the settings say. Returns export_asset's record (paths made relative to `out`)."""
  if not s.texture:
    for name in TEXTURED_FILES:
      (out / name).unlink(missing_ok=True)
  try:
    result = write.export_asset(out, vertices, faces, colors, views=views if s.texture else None,
                                texture=bool(s.texture), texture_size=int(s.texture_size))
  except UserError as e:
    raise UserError(f'export: {e}') from None
  for key in ('glb', 'obj', 'mtl', 'texture'):
    if key in result:
      result[key] = os.path.relpath(result[key], out)
  return result


def _export_from_ply(s: ReconstructSettings, views, out: Path) -> dict:
  """`_export` of a finished output's mesh.ply (its vertex colours, if any)."""
  mesh = optional.trimesh().load(out / 'mesh.ply', process=False)
  colors = None
  if s.vertex_colors and getattr(mesh.visual, 'kind', None) == 'vertex':
    colors = mesh.visual.vertex_colors[:, :3]
  return _export(s, views, out, mesh.vertices, mesh.faces, colors)
