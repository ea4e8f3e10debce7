"""Inputs of a diversity study, in one record format for every source.

Sources:
* `gso_eval.load_gso(manual_dir, data_dir=None)`: the GSO evaluation set (the SyncDreamer / HarmonyView
  `gso-eval` folder) through its TFDS builder `gso_eval.GsoEval` (built once into `data_dir`, read without
  TensorFlow);
* `images.load_folder(path, elevation_deg=30.0, matting='auto')`: the user's own images (a folder of
  .png/.webp/.jpg/..., an optional `elevations.json` {name: degrees} beside them); images without a usable
  alpha are cut out (hv_jax.data.matting).

A record is a dict:
  name        str                   object folder name (GSO) or file stem (images); unique within a source
  input_view  [H, W, 4] uint8       RGBA as stored, alpha = object mask (GSO: view 000, 256x256; images: any size)
  elevation   float                 input-view elevation in DEGREES (GSO eval: 30.0), within [-10, 40]
  gt_views    [16, 256, 256, 4] uint8 or None   ground-truth views 000..015, azimuth i x 22.5 deg (GSO only)
  mesh_path   str                   absolute path of the ground-truth model.obj, '' when there is none
  matting     str                   where input_view's alpha came from: 'alpha' (its own; GSO) or a matte
                                    ('plain', 'rembg'), which the sampler frames with photo_crop_size
`images.make_record` builds and checks one; `images.record_from_example` maps a GSO TFDS example to one.
Lists of records are sorted by name.

Submodules are imported on first use (`experiments.data.gso_eval` pulls in tensorflow_datasets; the image
folder path does not need it).
"""
import importlib

RECORD_KEYS = ('name', 'input_view', 'elevation', 'gt_views', 'mesh_path', 'matting')
_SUBMODULES = ('gso_eval', 'images')


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
