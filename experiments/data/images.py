"""Study records (`experiments.data`'s format) from the user's own images, and from GSO TFDS examples.

Images are found, validated and cut out exactly as the sampler's inputs (`hv_jax.data.preprocess`:
`find_inputs`, `load_rgba`, `check_elevation`; `hv_jax.data.matting` for images without a usable alpha), so a
bad file gets the same one-line error. Elevations default to
`elevation_deg`; an `elevations.json` ({"name": degrees, ...}, names = file stems) in the folder overrides it
per image.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from hv_jax.data import matting as matting_lib
from hv_jax.data import preprocess
from hv_jax.data.preprocess import InputError
from hv_jax.data.views import NUM_VIEWS

ELEVATIONS_FILE = 'elevations.json'
_MAX_LISTED = 3   # errors quoted in full when several inputs are bad


def make_record(name: str, input_view, elevation, gt_views=None, mesh_path: str = '', matting: str = 'alpha') -> dict:
  """One checked record: `input_view` [H, W, 4] uint8, `elevation` in degrees within [-10, 40],
  `gt_views` [16, H, W, 4] uint8 or None, `mesh_path` '' for none, `matting` where the input's alpha came from
  ('alpha': its own; 'plain' / 'rembg': a matte, and then the sampler frames it with photo_crop_size)."""
  name = str(name)
  if not name:
    raise InputError('a record needs a non-empty name')
  view = np.asarray(input_view)
  if view.dtype != np.uint8 or view.ndim != 3 or view.shape[-1] != 4:
    raise InputError(f'{name}: input_view must be an [H, W, 4] uint8 RGBA array, got {view.shape} {view.dtype}')
  try:
    preprocess.check_elevation(elevation)
  except InputError as e:
    raise InputError(f'{name}: {e}') from None
  if gt_views is not None:
    gt_views = np.asarray(gt_views)
    if gt_views.dtype != np.uint8 or gt_views.ndim != 4 or gt_views.shape[::3] != (NUM_VIEWS, 4):
      raise InputError(f'{name}: gt_views must be a [{NUM_VIEWS}, H, W, 4] uint8 array, '
                       f'got {gt_views.shape} {gt_views.dtype}')
  return {'name': name, 'input_view': view, 'elevation': float(elevation), 'gt_views': gt_views,
          'mesh_path': str(mesh_path or ''), 'matting': str(matting)}


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def record_from_example(example) -> dict:
  """A `gso_eval` TFDS example -> a record.

  Takes the TF-less form (`GsoEval.as_data_source()[i]`: text as bytes, `gt_views` a list of 16 arrays) and
  the `tfds.as_numpy` form (views stacked).
  """
  gt = example['gt_views']
  gt = gt if isinstance(gt, np.ndarray) else np.stack(list(gt))
  return make_record(_text(example['name']), example['input_view'], float(example['elevation']), gt,
                     _text(example['mesh_path']))


def read_elevations(path: Path, names: Sequence[str]) -> Dict[str, float]:
  """`elevations.json` at `path` as {name: degrees} ({} when absent); every entry must name an input."""
  path = Path(path)
  if not path.is_file():
    return {}
  try:
    table = json.loads(path.read_text(encoding='utf-8'))
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise InputError(f'{path}: cannot read it as JSON ({e}); expected {{"name": degrees, ...}}') from None
  if not isinstance(table, dict):
    raise InputError(f'{path} must hold a JSON object {{"name": degrees, ...}}, got a {type(table).__name__}')
  unknown = sorted(set(table) - set(names))
  if unknown:
    raise InputError(f'{path} names {unknown}, which are not inputs here; keys are image file stems '
                     f'({", ".join(sorted(names)[:5])}{", ..." if len(names) > 5 else ""})')
  for name, deg in table.items():
    if isinstance(deg, bool) or not isinstance(deg, (int, float)):
      raise InputError(f'{path}: the elevation of {name} must be a number of degrees, got {deg!r}')
    try:
      preprocess.check_elevation(deg)
    except InputError as e:
      raise InputError(f'{path}: {name}: {e}') from None
  return {name: float(deg) for name, deg in table.items()}


def load_folder(path, elevation_deg: float = 30.0, matting: str = 'auto', model: str = '') -> List[dict]:
  """Records of the images named by `path`, sorted by name (`gt_views` None, `mesh_path` '').

  `path` is what `preprocess.find_inputs` takes: a folder of images (.png, .webp, .jpg, ...), an image file,
  or GSO-style object folders (view 000 is read; use `gso_eval.load_gso` for their ground truth). An image
  without a usable alpha is cut out with `matting` (hv_jax.data.matting; `model`: the rembg model file), as
  the sampler does. Every image is checked before anything is returned; bad ones raise one InputError
  (quoting each bad file's message).
  """
  found = preprocess.find_inputs(path)
  try:
    preprocess.check_elevation(elevation_deg)
  except InputError as e:
    raise InputError(f'elevation_deg: {e}') from None
  root = Path(path)
  names = [name for name, _ in found]
  table = read_elevations(root / ELEVATIONS_FILE, names) if root.is_dir() else {}
  records, errors = [], []
  session = None
  for name, file in found:
    try:
      photo = matting_lib.load_photo(file)
      method = matting_lib.resolve(matting, photo.alpha, model)
      if method == 'alpha':
        view = np.array(preprocess.load_rgba(file))
      else:
        if method == 'rembg' and session is None:
          session = matting_lib.rembg_session(model)
        view = matting_lib.cutout(photo.rgb, matting_lib.matte(photo.rgb, method, session=session, name=str(file)))
      records.append(make_record(name, view, table.get(name, elevation_deg), matting=method))
    except (InputError, matting_lib.MattingError) as e:
      errors.append(str(e))
  if len(errors) == 1:
    raise InputError(errors[0])
  if errors:
    more = f' | ... and {len(errors) - _MAX_LISTED} more' if len(errors) > _MAX_LISTED else ''
    raise InputError(f'{len(errors)} of {len(found)} inputs in {root} are invalid: '
                     + ' | '.join(errors[:_MAX_LISTED]) + more)
  return sorted(records, key=lambda r: r['name'])

