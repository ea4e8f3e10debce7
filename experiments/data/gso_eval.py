"""TFDS builder of the GSO evaluation set (SyncDreamer / HarmonyView protocol), and `load_gso` for studies.

    records = load_gso('PATH/gso-eval', data_dir='PATH/tfds')   # builds once (~0.1 s per object), then reads

No TensorFlow: the dataset is written as ArrayRecord (`file_format='array_record'`, package `array_record`)
and read with `as_data_source()`, whose numpy decoding uses PIL. The views are stored as their original
PNG bytes (TFDS copies file paths through unencoded), so they read back pixel-exact; a view that is not an
8-bit RGBA PNG (e.g. LA, palette + transparency) is converted and re-encoded by PIL, also without TF.
Encoding numpy arrays would need TF (`tf.image.encode_png`), which is why the generator never yields any.
TFDS 4.9.10 also imports `importlib_resources` for any builder defined in a package but declares it only
for Python < 3.9 (tensorflow/datasets#11212): install it alongside.

One example per object folder, split 'test', in name order:
  name        Text                          the object folder's name
  input_view  Image (256, 256, 4) uint8      view 000, the input view of the paper's protocol
  elevation   Scalar float32                 input elevation in degrees: 30.0 for the whole set
  gt_views    Sequence(Image, length=16)     views 000 ... 015 (azimuth i x 22.5 deg, elevation 30 deg)
  mesh_path   Text                           absolute path of <object>/model.obj in the manual dir, '' if absent
"""
from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import List, Optional

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from experiments.data import images
from hv_jax import digest
from hv_jax.data import preprocess
from hv_jax.data.preprocess import InputError
from hv_jax.data.views import NUM_VIEWS, VIEW_FILES

VIEW_SIZE = 256
ELEVATION_DEG = 30.0   # every GSO-eval input view (camera-16.pkl: elevation pi/6)
MESH_FILE = 'model.obj'
FILE_FORMAT = 'array_record'

_CITATION = """\
@inproceedings{downs2022google,
  title={Google Scanned Objects: A High-Quality Dataset of 3D Scanned Household Items},
  author={Downs, Laura and Francis, Anthony and Koenig, Nate and Kinman, Brandon and Hickman, Ryan and
          Reymann, Krista and McHugh, Thomas B. and Vanhoucke, Vincent},
  booktitle={International Conference on Robotics and Automation (ICRA)},
  year={2022}
}
@inproceedings{liu2024syncdreamer,
  title={SyncDreamer: Generating Multiview-consistent Images from a Single-view Image},
  author={Liu, Yuan and Lin, Cheng and Zeng, Zijiao and Long, Xiaoxiao and Liu, Lingjie and Komura, Taku and
          Wang, Wenping},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2024}
}
"""

_DESCRIPTION = """\
The Google Scanned Objects (GSO) evaluation set of SyncDreamer / HarmonyView: per object, 16 ground-truth
256x256 RGBA renderings (alpha = object mask) at elevation 30 deg and azimuths i x 22.5 deg, view 000 being
the input view, plus the path of the ground-truth mesh when the folder has one.
GSO is licensed CC BY 4.0, (c) 2020 Google LLC: keep the attribution wherever the views are copied.
"""


def object_dirs(root) -> List[Path]:
  """The object folders of a gso-eval folder (every visible subfolder), sorted; InputError if there is none
  or one lacks a view."""
  root = Path(root)
  if not root.is_dir():
    raise InputError(f'GSO eval folder not found: {root} (expected object folders with 000.png ... 015.png)')
  dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith('.'))
  if not dirs:
    raise InputError(f'no object folders in {root}: the GSO eval folder holds one folder per object '
                     f'with 000.png ... {NUM_VIEWS - 1:03d}.png')
  lacking = []
  for d in dirs:
    missing = [name for name in VIEW_FILES if not (d / name).is_file()]
    if missing:
      what = 'all views' if len(missing) == NUM_VIEWS else ', '.join(missing)
      lacking.append(f'{d.name} ({what})')
  if lacking:
    raise InputError(f'GSO object folders in {root} lack views: {"; ".join(lacking)}; every object needs '
                     f'000.png ... {NUM_VIEWS - 1:03d}.png ({VIEW_SIZE}x{VIEW_SIZE} RGBA)')
  return dirs


def fingerprint(dirs: List[Path]) -> str:
  """sha256 over every file the build reads (the 16 views and model.obj of each object, with their names):
  a build is reused only for the same content, not just the same folder and object names."""
  h = hashlib.sha256()
  for d in dirs:
    for f in [d / name for name in VIEW_FILES] + [d / MESH_FILE]:
      if f.is_file():
        h.update(f'{d.name}/{f.name}\0{digest.file_sha256(f)}\0'.encode())
  return h.hexdigest()


class _LocalInfo(tfds.core.DatasetInfo):
  """This dataset is never on TFDS's GCS bucket: skip the lookup, which leaves an empty tmp*tfds folder in the
  system temp folder at every builder construction (DatasetInfo.initialize_from_bucket, TFDS 4.9)."""

  def initialize_from_bucket(self) -> None:
    return None


def _view(path: Path):
  """A view for the Image feature: its path (PNG bytes kept as they are) or, if not RGBA PNG, the RGBA image."""
  img = preprocess.load_rgba(path)   # InputError: unreadable, no alpha, empty alpha
  if img.size != (VIEW_SIZE, VIEW_SIZE):
    raise InputError(f'{path} is {img.width}x{img.height}; GSO eval views are {VIEW_SIZE}x{VIEW_SIZE} RGBA')
  with Image.open(path) as im:
    as_stored = im.format == 'PNG' and im.mode == 'RGBA'
  return path if as_stored else img


def _manual_dir(dl_manager) -> Path:
  try:
    return Path(os.fspath(dl_manager.manual_dir)).absolute()
  except AssertionError as e:   # TFDS: missing or empty; its message continues with the instructions
    first = ' '.join(str(e).split('Create it')[0].split())
    raise InputError(f'{first} Pass the gso-eval folder as manual_dir '
                     '(see experiments.data.gso_eval.GsoEval.MANUAL_DOWNLOAD_INSTRUCTIONS)') from None


class GsoEval(tfds.core.GeneratorBasedBuilder):
  """The GSO evaluation objects (16 RGBA views each, input view 000 at 30 deg), from a manual folder."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: name, input_view, elevation, gt_views (16), mesh_path.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Pass the `gso-eval` folder of the SyncDreamer / HarmonyView evaluation as manual_dir (no download: the
builder only reads it). Layout:
  gso-eval/<object>/000.png ... 015.png   256x256 RGBA views, elevation 30 deg, azimuth i x 22.5 deg
  gso-eval/<object>/model.obj             ground-truth mesh (optional)
  gso-eval/camera-16.pkl                  the cameras (not read)
The SyncDreamer / HarmonyView authors distribute this folder with their evaluation data; or render the
30 objects of Google Scanned Objects (https://goo.gle/scanned-objects, CC BY 4.0) with the cameras of
camera-16.pkl. Keep the CC BY 4.0 attribution (c) 2020 Google LLC with any copy.
"""

  def _info(self) -> tfds.core.DatasetInfo:
    view = tfds.features.Image(shape=(VIEW_SIZE, VIEW_SIZE, 4), dtype=np.uint8, encoding_format='png')
    return _LocalInfo(
        builder=self,
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'name': tfds.features.Text(doc='object folder name'),
            'input_view': tfds.features.Image(shape=(VIEW_SIZE, VIEW_SIZE, 4), dtype=np.uint8,
                                              encoding_format='png', doc='view 000, RGBA'),
            'elevation': tfds.features.Scalar(np.float32, doc='input-view elevation, degrees'),
            'gt_views': tfds.features.Sequence(view, length=NUM_VIEWS, doc='views 000 ... 015, RGBA'),
            'mesh_path': tfds.features.Text(doc="absolute path of model.obj, '' if absent"),
        }),
        homepage='https://goo.gle/scanned-objects',
        citation=_CITATION,
        license='CC BY 4.0, (c) 2020 Google LLC',
        disable_shuffling=True,   # keep the name order
        metadata=tfds.core.MetadataDict(),   # manual_dir, objects and content fingerprint, for load_gso
    )

  def _split_generators(self, dl_manager):
    root = _manual_dir(dl_manager)
    dirs = object_dirs(root)
    self.info.metadata.update(manual_dir=str(root), objects=[d.name for d in dirs], fingerprint=fingerprint(dirs))
    return {'test': self._generate_examples(dirs)}

  def _generate_examples(self, dirs):
    for d in dirs:
      views = [_view(d / name) for name in VIEW_FILES]
      mesh = d / MESH_FILE
      yield d.name, {'name': d.name, 'input_view': views[0], 'elevation': ELEVATION_DEG, 'gt_views': views,
                     'mesh_path': str(mesh) if mesh.is_file() else ''}


def _is_current(builder: GsoEval, root: Path, names: List[str]) -> bool:
  if not builder.is_prepared():
    return True   # nothing to compare: download_and_prepare builds it
  meta = builder.info.metadata or {}
  return (meta.get('manual_dir') == str(root) and list(meta.get('objects', ())) == names and
          meta.get('fingerprint') == fingerprint([root / n for n in names]))


def load_gso(manual_dir, data_dir: Optional[str] = None) -> List[dict]:
  """Records (`experiments.data`'s format) of the GSO eval folder `manual_dir`, sorted by name.

  Builds the TFDS dataset into `data_dir` (TFDS's default, ~/tensorflow_datasets, when None) unless a build
  of this same folder with the same objects and file contents is there; any other build is replaced. Processes that
  share a `data_dir` (the processes of one host, or hosts on a file system with POSIX locks) take turns
  through a file lock, so the first builds and the others read its build.
  """
  root = Path(manual_dir).absolute()
  names = [d.name for d in object_dirs(root)]
  lock_dir = Path(data_dir or os.path.expanduser('~/tensorflow_datasets'))
  lock_dir.mkdir(parents=True, exist_ok=True)
  with open(lock_dir / '.gso_eval.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file closes (also when the process dies)
    return _build_and_read(root, names, data_dir)


def _build_and_read(root: Path, names: List[str], data_dir: Optional[str]) -> List[dict]:
  builder = GsoEval(data_dir=data_dir, file_format=FILE_FORMAT)
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if not _is_current(builder, root, names):
    logging.info('gso_eval in %s was built from another folder or content; rebuilding from %s', builder.data_dir,
                 root)
    mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root),
                                                                             download_mode=mode))
  if mode != tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS:
    builder = GsoEval(data_dir=data_dir, file_format=FILE_FORMAT)   # re-read the new build's info
  source = builder.as_data_source(split='test')
  return sorted((images.record_from_example(source[i]) for i in range(len(source))), key=lambda r: r['name'])
