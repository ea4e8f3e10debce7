"""Cut the object out of photos: writes OUT/<name>.png as RGBA (the matte as alpha).

  python -m hv_jax.matte --config.input=photo.jpg --config.out=DIR
  python -m hv_jax.matte --config.input=a.jpg,b.png,photos/ --config.out=DIR --config.method=rembg \
      --config.model=~/.u2net/isnet-general-use.onnx

Methods (hv_jax/data/matting.py): auto (the default: the image's alpha if it has a usable one, else rembg if
`model` is set, else plain), alpha, plain (plain or smoothly varying backgrounds, no model), rembg (a model
file you give; nothing is downloaded). Each output's method is logged and listed in OUT/matting.json.
Every setting: MatteSettings below (--help lists them).
"""
from __future__ import annotations

import dataclasses
import sys
import time

from absl import logging

from hv_jax import atomic, cli, settings
from hv_jax.data import matting
from hv_jax.data import preprocess
from hv_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class MatteSettings:
  """Every setting of `python -m hv_jax.matte`."""
  input: str = ''          # image files and/or folders of images, comma-separated
  out: str = ''            # output folder: <name>.png (RGBA) per input, matting.json
  method: str = 'auto'     # auto | alpha | plain | rembg
  model: str = ''          # rembg model file (u2net.onnx, isnet-general-use.onnx, birefnet-general.onnx, ...)
  overwrite: bool = False  # replace existing outputs (otherwise an existing <name>.png is refused)

  def validate(self) -> None:
    for field, what in (('input', 'image files or folders, comma-separated'), ('out', 'the output folder')):
      if not getattr(self, field):
        raise UserError(f'no {field}: set --config.{field}=... ({what})')
    matting.check_settings(self.method, self.model, method_flag='method', model_flag='model')


def input_files(spec: str):
  """The image files named by `spec` (comma-separated files and folders; preprocess.image_files)."""
  try:
    return preprocess.image_files(spec)
  except preprocess.InputError as e:
    raise UserError(str(e)) from None


def run(s: MatteSettings) -> dict:
  """Mattes every input; returns {name: {'method': ..., 'seconds': ...}} (also written to out/matting.json)."""
  s.validate()
  files = input_files(s.input)
  out = atomic.require_writable(s.out)
  if not s.overwrite:
    taken = [f.stem for f in files if (out / f'{f.stem}.png').exists()]
    if taken:
      raise UserError(f'{out / taken[0]}.png exists: use another out folder or --config.overwrite=True')
  photos = [(f, matting.load_photo(f)) for f in files]       # every input read before anything is written
  session = None
  if any(matting.resolve(s.method, p.alpha, s.model) == 'rembg' for _, p in photos):
    session = matting.rembg_session(s.model)
  record = {}
  for f, photo in photos:
    for note in photo.notes:
      logging.info('%s: %s', f.name, note)
    method = matting.resolve(s.method, photo.alpha, s.model)
    t0 = time.perf_counter()
    alpha = matting.matte(photo.rgb, method, alpha=photo.alpha, session=session, name=str(f))
    seconds = time.perf_counter() - t0
    atomic.write_png(out / f'{f.stem}.png', matting.cutout(photo.rgb, alpha))
    logging.info('%s: matted with %s in %.2f s', f.name, method, seconds)
    record[f.stem] = {'input': str(f), 'method': method, 'seconds': round(seconds, 3),
                      'notes': list(photo.notes), 'model': s.model if method == 'rembg' else None,
                      'foreground_fraction': round(float((alpha > 0.5).mean()), 4)}
  atomic.write_json(out / 'matting.json', {'settings': settings.as_json(s), 'images': record})
  return record


def matte_cli(s: MatteSettings) -> int:
  record = run(s)
  for name, r in record.items():
    print(f"{name}: {r['method']} ({r['seconds']:.2f} s)")
  print(f'done: {len(record)} cut-out(s) in {s.out}')
  return 0


def main(argv=None) -> int:
  logging.set_verbosity(logging.INFO)
  return cli.main(argv, MatteSettings, matte_cli, prog='python -m hv_jax.matte', doc=__doc__,
                  default=lambda: settings.config_dict(MatteSettings))


if __name__ == '__main__':
  sys.exit(main())
