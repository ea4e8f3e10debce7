"""The photo-to-asset pipeline (hv_jax.pipeline.image_to_3d) behind a long-lived front end (hv_jax.app): the
model loaded and compiled once, one job at a time on the devices, progress, cancel, and every job's outputs
written as the command writes them.

  service = Service(base_settings)                 # loads the weights, compiles the sampler (warm_up)
  job = service.upload('photo.jpg')                # a run folder; the photo copied in, cut out and framed
  job = service.generate(job, choices, run)        # N instances at the final elevation, scored
  report = service.reconstruct(job, k, run)        # NeuS on instance k, the export, report.json

A run folder OUTPUT/<run id>/ holds the photo (<name>) and what `python -m hv_jax.image_to_3d
--config.input=OUTPUT/<run id>/<name> --config.output_dir=OUTPUT/<run id>` writes, with the same settings, in
<stem>/ (that command run there reuses every stage). Each upload gets a run folder; a Generate on a folder that
already holds instances copies the photo into a new one, so no run folder mixes settings.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

from hv_jax import atomic, checks
from hv_jax.data.views import split_strip
from hv_jax.errors import UserError
from hv_jax.pipeline import image_to_3d
from hv_jax.pipeline.image_to_3d import Hooks, ImageTo3DSettings
from hv_jax.sampling import pipeline as sampling


class Cancelled(Exception):
  """The job's session asked to stop it."""


@dataclasses.dataclass(frozen=True)
class Choices:
  """What a request sets of the base settings (the app's widgets); the rest is the config's."""
  elevation: str = 'auto'          # degrees or 'auto'
  guidance: str = 'harmonyview'
  s1: float = 2.0
  s2: float = 1.0
  cfg_scale: float = 2.0
  sample_steps: int = 50
  seed: int = 6033
  sample_num: int = 4

  @classmethod
  def of(cls, s: ImageTo3DSettings) -> 'Choices':
    return cls(**{f.name: getattr(s, f.name) if f.name == 'elevation' else getattr(s.sample, f.name)
                  for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class Job:
  """One uploaded photo in its run folder; after `generate`, its settings and the scored rounds."""
  run_dir: Path
  photo: Path                      # the upload, copied into run_dir
  prep: Dict[str, Any]             # the prepare stage's record (matting method, notes)
  settings: Optional[ImageTo3DSettings] = None
  rounds: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
  elevation: Dict[str, Any] = dataclasses.field(default_factory=dict)
  seconds: Dict[str, float] = dataclasses.field(default_factory=dict)
  generate_seconds: float = 0.0    # report.json's total: the generate and reconstruct requests' time

  @property
  def folder(self) -> Path:
    """The command's folder of the photo: OUTPUT/<stem>."""
    return self.run_dir / self.photo.stem

  @property
  def cutout(self) -> Path:
    return self.folder / image_to_3d.INPUT_RGBA

  def strips(self) -> List[Path]:
    return image_to_3d.strips_of(self.settings, self.folder, self.rounds[-1]['elevation_deg'])

  def views(self) -> List[np.ndarray]:
    """[16, H, W, 3] uint8 views of each instance of the final round."""
    return [split_strip(np.asarray(Image.open(p).convert('RGB'))) for p in self.strips()]


class Run:
  """A job being run for one session: its progress (read by the front end) and its cancel flag."""

  def __init__(self, session: str = ''):
    self.session = session
    self.fraction, self.text = 0.0, 'waiting for the device'
    self._cancel = threading.Event()

  def tell(self, fraction: float, text: str) -> None:
    self.check()
    self.fraction, self.text = min(max(float(fraction), 0.0), 1.0), text

  def cancel(self) -> None:
    self._cancel.set()

  @property
  def cancelled(self) -> bool:
    return self._cancel.is_set()

  def check(self) -> None:
    if self._cancel.is_set():
      raise Cancelled()


def safe_name(name: str) -> str:
  """An uploaded file's name as a file name of the run folder (letters, digits, '._-'; the suffix kept)."""
  p = Path(Path(str(name)).name)
  stem = re.sub(r'[^A-Za-z0-9._-]+', '_', p.stem).strip('._') or 'upload'
  suffix = re.sub(r'[^A-Za-z0-9.]+', '', p.suffix.lower())
  return stem[:80] + suffix


class Service:
  """The weights loaded once, the sampler compiled at start; jobs run one at a time on the devices."""

  def __init__(self, base: ImageTo3DSettings, output_dir: str, convert_ckpt=None, warm_up: bool = True):
    self.base = dataclasses.replace(base, sample=dataclasses.replace(base.sample, progress=True))
    self.output = Path(output_dir)
    self.convert_ckpt = convert_ckpt
    self._device = threading.Lock()
    self._runs: Dict[str, List[Run]] = {}
    dataclasses.replace(self.base, input='-').validate()      # every setting but the image, before any work
    probe = self.base.round_settings(self._default_elevation(), self.output / 'x' / 'rounds' / 'x')
    self.model = sampling.load_model(probe, convert_ckpt)
    self.warm_up_seconds = sampling.warm_up(probe, self.model) if warm_up else 0.0

  @property
  def random_weights(self) -> bool:
    return self.base.checkpoint == 'random'

  def _default_elevation(self) -> float:
    return float(self.base.elevation_prior if self.base.elevation == 'auto' else self.base.elevation_deg())

  # ------------------------------------------------------------------------------- jobs

  def upload(self, path: str, name: str = '') -> Job:
    """A new run folder with the photo copied in, cut out and framed (the prepare stage); UserError (one line,
    the command's) for an unreadable photo or no foreground, and then no run folder is left."""
    run_dir = self._new_run_dir()
    photo = run_dir / safe_name(name or Path(path).name)
    try:
      shutil.copyfile(path, photo)
      prep = image_to_3d.prepare(self.base, photo, run_dir / photo.stem)
    except BaseException:
      shutil.rmtree(run_dir, ignore_errors=True)
      raise
    return Job(run_dir, photo, prep)

  def _new_run_dir(self) -> Path:
    atomic.require_writable(self.output)
    self.output.mkdir(parents=True, exist_ok=True)
    while True:
      d = self.output / f'{time.strftime("%Y%m%d-%H%M%S")}-{secrets.token_hex(3)}'
      try:
        d.mkdir()
        return d
      except FileExistsError:
        continue

  def settings_for(self, job: Job, c: Choices) -> ImageTo3DSettings:
    """The request's settings: the base ones with the choices, the photo and the run folder; UserError as the
    command's for a bad value."""
    ints = {f: checks.check_number(f'--config.sample.{f}', getattr(c, f), integer=True)
            for f in ('sample_steps', 'seed', 'sample_num')}
    floats = {f: checks.check_number(f'--config.sample.{f}', getattr(c, f)) for f in ('s1', 's2', 'cfg_scale')}
    sample = dataclasses.replace(self.base.sample, guidance=str(c.guidance), **ints, **floats)
    s = dataclasses.replace(self.base, input=str(job.photo), output_dir=str(job.run_dir),
                            elevation=str(c.elevation), sample=sample)
    s.validate()
    return s

  @contextlib.contextmanager
  def running(self, session: str):
    """The session's Run, holding the devices (after the job before it has stopped)."""
    run = Run(session)
    self._runs.setdefault(session, []).append(run)
    try:
      with self._device:
        run.check()
        yield run
    finally:
      self._runs[session].remove(run)

  def cancel(self, session: str) -> int:
    """Stops the session's jobs (running: at the next DDIM or NeuS log step; waiting: before they start)."""
    runs = list(self._runs.get(session, ()))
    for run in runs:
      run.cancel()
    return len(runs)

  def generate(self, job: Job, c: Choices, run: Run) -> Job:
    """N instances sampled at the final elevation ('auto': a first round at the prior, reconstructed for the
    estimate) and scored; returns the job with its settings and rounds (a new job when this one has some)."""
    if job.settings is not None:
      job = self.upload(str(job.photo), job.photo.name)
    s = self.settings_for(job, c)
    t0 = time.time()
    job = dataclasses.replace(job, settings=s, rounds=[], elevation={}, seconds={'prepare': job.prep['seconds']})
    run.tell(0, 'sampling')
    job.rounds, job.elevation = image_to_3d.views_rounds(s, job.folder, self.convert_ckpt, job.seconds,
                                                         self._hooks(run, s))
    job.generate_seconds = time.time() - t0
    return job

  def reconstruct(self, job: Job, instance: int, run: Run) -> Dict[str, Any]:
    """NeuS on `instance` of the final round, the export and report.json (the command's with select=instance)."""
    if job.settings is None or not job.rounds:
      raise UserError('generate the views first')
    s = dataclasses.replace(job.settings, select=int(instance))
    s.validate()
    record, changed = image_to_3d.choose(s, job.folder, job.rounds[-1], job.seconds)
    if changed:        # other views than its NeuS result was made from: redone
      s = dataclasses.replace(s, overwrite=True)
      record = {k: v for k, v in record.items() if k != 'neus'}
    job.rounds[-1] = record
    run.tell(0, 'NeuS')
    report = image_to_3d.asset(s, job.photo, job.folder, job.prep, job.rounds, job.elevation, job.seconds,
                               time.time() - job.generate_seconds, self._hooks(run, s))
    job.rounds[-1] = report['rounds'][-1]
    return report

  def _hooks(self, run: Run, s: ImageTo3DSettings) -> Hooks:
    total = int(s.neus.train.total_steps)

    def on_sample(done, todo, step, steps):
      run.tell((done * steps + step) / max(1, todo * steps),
               f'sampling: instance {min(done + 1, todo)} of {todo}, DDIM step {step} of {steps}')

    def on_neus(row):
      step = int(row['step'])
      run.tell(step / total, f'NeuS: step {step} of {total}' if step < total else 'NeuS: extracting the mesh')

    return Hooks(model=self.model, on_sample=on_sample, on_neus=on_neus)
