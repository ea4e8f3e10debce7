"""Convert the original PyTorch SyncDreamer checkpoint (and OpenAI CLIP) to an orbax checkpoint of Flax params.

  python -m convert.syncdreamer --config.ckpt=syncdreamer-pretrain.ckpt [--config.clip=ViT-L-14.pt] --config.out=DIR

Writes DIR/params (orbax), DIR/model_config.json and DIR/conversion.json (source hashes, counts and the
allow-listed unused keys). Tensors are read from a memory-mapped, weights-only torch.load and converted one
by one. Every key is accounted for: unmapped, missing and mis-shaped keys are listed by name and the
command exits non-zero with nothing left at `out` (it writes to a temporary folder and renames at the end;
folders above `out` are created only once there is something to write). A mismatch between the checkpoint and
the model config is reported as such, with the config the checkpoint looks like (`--config.model=full|tiny|PATH`,
the sampler's spelling too). Every setting: ConvertSettings below (--help lists them).

`run_in_child` runs the same conversion in a fresh child process: the sampler converts a .ckpt on first use
that way, so the torch state dict and the converted arrays are gone before it loads the params.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from tqdm import tqdm

from convert import names
from convert.torch_io import ConversionError, Report, convert_tensors, load_state_dict, plan_key
from hv_jax import atomic, checkpoint, cli, digest, settings
from hv_jax.errors import UserError
from hv_jax.models.config import ModelConfig
from hv_jax.models.init import abstract_params
from hv_jax.sampling import schedule


# ----------------------------------------------------------------------------- mapping

@functools.lru_cache(maxsize=4)
def target_shapes(config) -> Dict[Tuple[str, ...], Tuple[tuple, object]]:
  """Flat {path: (shape, dtype)} of the Flax params, built by jax.eval_shape (no weights allocated).

  Cached per config (the full size takes ~15 s to trace on a 2-core CPU); do not modify the returned dict.
  """
  flat = traverse_util.flatten_dict(abstract_params(config))
  return {k: (tuple(v.shape), v.dtype) for k, v in flat.items()}


def check_manifest(keys_and_shapes: Iterable[Tuple[str, tuple]], config) -> Report:
  """Dry run over a key/shape manifest (no tensors): which keys map, which are unused, what is missing."""
  targets = target_shapes(config)
  report = Report()
  covered = set()
  for key, shape in keys_and_shapes:
    mapped = plan_key(key, tuple(shape), targets, report)
    if mapped is not None:
      if mapped[0] in covered:
        report.duplicate.append(key)
      covered.add(mapped[0])
      report.converted += 1
  misshaped = {m[1] for m in report.misshaped}
  report.missing = ['/'.join(p) for p in targets if p not in covered and '/'.join(p) not in misshaped]
  return report


def check_buffers(state_dict, report: Report):
  """The schedule buffers are recomputed, not loaded: make sure they agree with the checkpoint's."""
  for key, ref in (('betas', schedule.betas()), ('alphas_cumprod', schedule.alphas_cumprod())):
    if key in state_dict:
      got = state_dict[key].float().numpy()
      err = float(np.max(np.abs(got - ref))) if got.shape == ref.shape else float('inf')
      if err > 1e-6:
        raise ConversionError(f'checkpoint buffer {key} differs from the scaled-linear schedule (max err {err})')
      report.checks.append(f'{key}: equal to hv_jax.sampling.schedule (max abs err {err:.1e})')


# ----------------------------------------------------------------------------- diagnosis

CLIP_PREFIX = next(p for p, tree in names.PREFIXES if tree == ('clip',))   # 'clip_image_encoder.model.visual.'
CALLERS = ('cli', 'sampler')   # who is told what to do: the converter's flags or the sampler's config fields


def named_model_config(name: str):
  """'full' (the published SyncDreamer) or 'tiny' (the demo model = the parity fixtures' dims); else None."""
  if name == 'full':
    return ModelConfig.full()
  if name == 'tiny':
    return ModelConfig.tiny()
  return None


def config_name(config) -> Optional[str]:
  """'full' / 'tiny' when `config` is one of the named sizes, else None."""
  arch = config.architecture()
  return next((name for name in ('full', 'tiny') if named_model_config(name) == arch), None)


def fitting_config(shapes: Dict[str, tuple], exclude) -> Optional[str]:
  """The named model size ('tiny', 'full') whose params every mappable checkpoint key fits, if any.

  `shapes`: {checkpoint key: shape}. Missing keys are not held against a size (they are reported anyway).
  """
  for name in ('tiny', 'full'):   # tiny first: it is traced in a moment, the full size takes ~15 s
    try:
      candidate = named_model_config(name)
    except ImportError:  # pragma: no cover
      continue
    if candidate == exclude:
      continue
    targets, report = target_shapes(candidate), Report()
    mapped = sum(plan_key(key, shape, targets, report) is not None for key, shape in shapes.items())
    if mapped and not report.misshaped and not report.unmapped:
      return name
  return None


def config_flag(name: Optional[str]) -> str:
  """How the model config `name` ('full', 'tiny', or None for a JSON file of its dims) is passed: the same
  field, `model`, in the converter's settings and in the sampler's."""
  return f'--config.model={name or "PATH.json"}'


def mismatch_message(ckpt: str, config, report: 'Report', shapes: Dict[str, tuple]) -> str:
  """The one line for a checkpoint that does not match the model config, with the likely cause."""
  given = config_name(config)
  what = {'full': 'full size', 'tiny': 'tiny'}.get(given, 'custom dims')
  counts = []
  if report.misshaped:
    eg = ', '.join(m[0] for m in report.misshaped[:3]) + (', ...' if len(report.misshaped) > 3 else '')
    counts.append(f'{len(report.misshaped)} mis-shaped keys (e.g. {eg})')
  counts += [f'{len(report.unmapped)} unexpected', f'{len(report.missing)} missing']
  line = f'{ckpt} does not match the model config ({what}): ' + ', '.join(counts)
  if not report.misshaped:
    return line           # keys added or removed: an edited checkpoint or another architecture, not a size
  fits = fitting_config(shapes, exclude=config)
  if fits is not None:
    desc = {'full': 'the full-size SyncDreamer', 'tiny': 'the tiny SyncDreamer (the demo and parity-fixture size)'}
    return line + f'; the checkpoint looks like {desc[fits]}: pass its model config with {config_flag(fits)}'
  return line + ('; the checkpoint is neither the full-size nor the tiny SyncDreamer: pass its dims as JSON '
                 f'with {config_flag(None)}')


def no_clip_message(ckpt: str, caller: str) -> str:
  line = f'{ckpt} has no CLIP image tower (no {CLIP_PREFIX}* weights): '
  if caller == 'sampler':
    return line + ('the sampler cannot add one; convert it once with python -m convert.syncdreamer '
                   f'--config.ckpt={ckpt} --config.clip=ViT-L-14.pt --config.out=DIR and pass --config.checkpoint=DIR')
  return line + 'pass the OpenAI CLIP file with --config.clip=ViT-L-14.pt'


def convert(ckpt: str, config, clip: Optional[str] = None, progress: bool = True, caller: str = 'cli'):
  """Returns (nested params dict of numpy arrays, Report). Raises ConversionError on any problem.

  The error's first line is the message (phrased for `caller`: 'cli' names this converter's flags, 'sampler'
  the sampler's config fields); for a mismatch the following lines name every offending key.
  """
  if caller not in CALLERS:
    raise ValueError(f'caller must be one of {CALLERS}, got {caller!r}')
  if clip is not None and not os.path.isfile(clip):     # before the (long) main checkpoint is read
    raise ConversionError(f'CLIP checkpoint not found: {clip}')
  sd = load_state_dict(ckpt)
  if not any(k.startswith('model.diffusion_model.') for k in sd):
    raise ConversionError(f'{ckpt} is not a SyncDreamer checkpoint: no model.diffusion_model.* keys '
                          f'(found e.g. {sorted(sd)[:3]})')
  targets = target_shapes(config)
  report = Report()
  bar = _progress(len(sd) + (0 if clip is None else 1), progress)
  try:        # the bar is closed before any error line is printed
    flat = convert_tensors(sd.items(), targets, report, progress=bar, release=True)
    check_buffers(sd, report)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    has_clip = any(k.startswith(CLIP_PREFIX) for k in sd)
    if clip is not None:
      if has_clip:
        report.checks.append(f'CLIP tower taken from {clip} (overrides the copy inside the checkpoint)')
        flat = {p: v for p, v in flat.items() if p[0] != 'clip'}
      csd = load_state_dict(clip, what='CLIP checkpoint')
      flat.update(convert_tensors(csd.items(), targets, report, prefixes=names.CLIP_FILE_PREFIXES))
      del csd
    del sd
  finally:
    if bar is not None:
      bar.close()
  misshaped = {m[1] for m in report.misshaped}
  report.missing = ['/'.join(p) for p in targets if p not in flat and '/'.join(p) not in misshaped]
  # A config mismatch mis-shapes the CLIP keys too: say so before concluding that the tower is absent.
  if report.misshaped:
    raise ConversionError(mismatch_message(ckpt, config, report, shapes) + '\n' + report.problems())
  if clip is None and not has_clip:
    raise ConversionError(no_clip_message(ckpt, caller))
  if not report.ok:
    raise ConversionError(mismatch_message(ckpt, config, report, shapes) + '\n' + report.problems())
  return traverse_util.unflatten_dict(flat), report


def _progress(total, enabled):
  if not enabled:
    return None
  return tqdm(total=total, desc='converting', unit='tensor', file=sys.stderr)


# ----------------------------------------------------------------------------- CLI

@dataclasses.dataclass(frozen=True)
class ConvertSettings:
  """Every setting of `python -m convert.syncdreamer`."""
  ckpt: str = ''              # syncdreamer-pretrain.ckpt (PyTorch Lightning checkpoint)
  out: str = ''               # output folder (must not exist, or set overwrite)
  clip: str = ''              # OpenAI CLIP ViT-L-14.pt, if the .ckpt lacks the CLIP tower
  model: str = 'full'         # model dims: 'full' (the published SyncDreamer), 'tiny' (the demo / parity size), or a JSON file (a parity config.json works)
  overwrite: bool = False     # replace an existing `out`
  quiet: bool = False         # no progress bar, no report


def convert_cli(s: ConvertSettings) -> int:
  for field, what in (('ckpt', 'the PyTorch checkpoint'), ('out', 'the output folder')):
    if not getattr(s, field):
      raise UserError(f'no {field}: set --config.{field}=PATH ({what})')
  try:
    run(s.ckpt, s.out, clip=s.clip or None, model_config=s.model or None, overwrite=s.overwrite,
        verbose=not s.quiet)
  except ConversionError as e:
    print(f'error: {e}', file=sys.stderr)   # the message, then every offending key on its own line
    return 2
  return 0


def main(argv=None) -> int:
  return cli.main(argv, ConvertSettings, convert_cli, prog='python -m convert.syncdreamer', doc=__doc__,
                  default=lambda: settings.config_dict(ConvertSettings))


def load_model_config(path):
  """None or 'full' -> the full size; 'tiny' -> the demo size; a ModelConfig as it is; else a JSON file."""
  if path is None:
    return ModelConfig.full()
  if isinstance(path, ModelConfig):
    return path
  if path in ('full', 'tiny') and not os.path.isfile(path):
    return named_model_config(path)
  try:
    with open(path) as f:
      d = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ConversionError(f'cannot read model config {path}: {e}') from e
  return ModelConfig.from_dict(d.get('tiny', d))


def run(ckpt: str, out: str, *, clip=None, model_config=None, overwrite=False, verbose=True, caller='cli'):
  """Converts and writes atomically; returns the Report.

  `model_config`: None/'full', 'tiny', a JSON path or a ModelConfig. Nothing is created before the conversion
  has succeeded: the folders above `out` are made just before writing, and removed again if writing fails.
  """
  config = load_model_config(model_config)
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise ConversionError(f'{out} exists; choose another --config.out or set --config.overwrite=True')
  parent = os.path.dirname(out)
  # refused before a long conversion; nothing created yet
  atomic.require_writable(parent, 'cannot write to {folder}: {problem}', error=ConversionError)
  params, report = convert(ckpt, config, clip=clip, progress=verbose, caller=caller)
  st = os.stat(ckpt)      # size and mtime: a cache of this conversion is checked against the .ckpt cheaply
  meta = {'source': {'ckpt': os.path.abspath(ckpt), 'ckpt_sha256': digest.file_sha256(ckpt), 'ckpt_size': st.st_size,
                     'ckpt_mtime_ns': st.st_mtime_ns},
          'converted_keys': report.converted,
          'unused_keys': [{'key': k, 'reason': r} for k, r in report.unused],
          'checks': report.checks}
  if clip is not None:
    meta['source'].update(clip=os.path.abspath(clip), clip_sha256=digest.file_sha256(clip))
  created, tmp, done = [], None, False
  try:
    created = atomic.make_dirs(parent)
    tmp = tempfile.mkdtemp(prefix=f'{TMP_PREFIX}{os.getpid()}-', dir=parent)
    with orbax_without_host_copies():
      checkpoint.save(os.path.join(tmp, 'ckpt'), params, config, meta)
    if os.path.exists(out):
      shutil.rmtree(out)
    os.replace(os.path.join(tmp, 'ckpt'), out)
    done = True
  except OSError as e:
    raise ConversionError(f'cannot write {out}: {e.strerror or e}') from e
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
    if not done:
      atomic.remove_empty_dirs(created)
  del params
  if verbose:
    print(f'converted {report.converted} tensors -> {out}')
    print(f'{len(report.unused)} checkpoint keys are unused on purpose (allow-list):')
    for reason in sorted({r for _, r in report.unused}):
      keys = [k for k, r in report.unused if r == reason]
      print(f'  {len(keys):4d}  {reason}: {", ".join(keys[:4])}{" ..." if len(keys) > 4 else ""}')
    for c in report.checks:
      print(f'  check: {c}')
  return report


@contextlib.contextmanager
def orbax_without_host_copies():
  """Orbax saves numpy arrays through a handler that deep-copies each one first (a guard against changes
  during an asynchronous save): with the full model that copy alone adds 4.7 GiB to the converter's peak.
  The converted arrays are held by nobody else and checkpoint.save waits for the write, so within this block
  numpy arrays are saved without the copy; the registry is restored afterwards. If orbax's internals moved,
  nothing changes but the memory.
  """
  try:
    # lazy and guarded: a private orbax module that may move between versions
    from orbax.checkpoint._src.serialization import type_handler_registry as registry
    handlers = registry.GLOBAL_TYPE_HANDLER_REGISTRY
    previous = handlers.get(np.ndarray)
    handlers.add(np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False), override=True,
                 ignore_warnings=True)
  except Exception:  # noqa: BLE001  (another orbax version: save as it is)
    yield
    return
  try:
    yield
  finally:
    handlers.add(np.ndarray, previous, override=True, ignore_warnings=True)


TMP_PREFIX = '.convert-'   # + pid: the temporary folder beside `out` that a run renames into place
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository root, holding convert/


def convert_for_sampler(ckpt: str, out: str, model_config: Optional[ModelConfig] = None) -> None:
  """The sampler's first-use conversion: `ckpt` -> the orbax checkpoint folder `out`, in a child process.

  What `python -m hv_jax.sample` (and the study runner) hand to `hv_jax.sampling.pipeline.run` as its
  `convert_ckpt`: the library keeps the cache rules (hv_jax.sampling.pipeline.convert_cached) and never
  imports this package. Errors are ConversionError (a UserError) phrased for the sampler's config fields.
  """
  run_in_child(str(ckpt), str(out), model_config=model_config, caller='sampler')


def run_in_child(ckpt: str, out: str, *, clip=None, model_config=None, overwrite=False, verbose=True,
                 caller='cli') -> Report:
  """`run` in a fresh child process (`python -c ...`); returns its Report.

  The child holds the memory-mapped torch state dict and the converted arrays and returns it all to the
  system when it exits, so a caller that goes on to load the params (the sampler) peaks at what loading
  alone needs (docs/speed.md). Its progress bar and summary go to the inherited stdout/stderr; a
  ConversionError in the child is raised here with the same message. If the child dies (killed, out of
  memory) its temporary folder and any folder it created above `out` are removed and a ConversionError says
  so: `out` is written by one rename at the end, so it never exists half-written.
  """
  out = os.path.abspath(out)
  parent = os.path.dirname(out)
  created = atomic.missing_dirs(parent)
  spec = model_config.to_dict() if isinstance(model_config, ModelConfig) else model_config
  job = dict(ckpt=str(ckpt), out=out, clip=clip, model_config=spec, overwrite=bool(overwrite),
             verbose=bool(verbose), caller=caller)
  # The checkout holding `convert/` goes first on the child's sys.path: hv_jax may be installed (it is found
  # anywhere), convert/ is not, and the child's working folder may hold another `convert`.
  read_fd, write_fd = os.pipe()
  try:
    proc = subprocess.Popen([sys.executable, '-c', 'import sys; sys.path.insert(0, sys.argv[3]); '
                             'from convert.syncdreamer import _child_main; '
                             'sys.exit(_child_main(int(sys.argv[1]), sys.argv[2]))', str(write_fd), json.dumps(job),
                             CHECKOUT], pass_fds=(write_fd,))
  finally:
    os.close(write_fd)
  try:
    with os.fdopen(read_fd, 'r') as f:
      answer = f.read()          # until the child exits (or closes its end): no pipe-buffer deadlock
    rc = proc.wait()
  except BaseException:          # Ctrl-C here: the child (same process group) got it too; never leave it behind
    proc.kill()
    proc.wait()
    _clean_after_child(proc.pid, parent, out, created)
    raise
  result = json.loads(answer) if answer.strip() else {}
  if rc == 0 and 'report' in result:
    r = result['report']
    return Report(converted=r['converted'], unused=[tuple(u) for u in r['unused']], checks=r['checks'])
  if 'error' in result:
    raise ConversionError(result['error'])
  _clean_after_child(proc.pid, parent, out, created)
  how = f'was killed by signal {-rc}' if rc < 0 else f'exited with status {rc}'
  raise ConversionError(f'the conversion of {ckpt} ended abnormally (the converter process {how}; out of memory?): '
                        f'nothing was written to {out}')


def _clean_after_child(pid: int, parent: str, out: str, created: List[str]) -> None:
  if os.path.isdir(parent):
    for name in os.listdir(parent):
      if name.startswith(f'{TMP_PREFIX}{pid}-'):
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
  if not os.path.isdir(out):
    atomic.remove_empty_dirs(created)


def _child_main(result_fd: int, job_json: str) -> int:
  """The child of `run_in_child`: runs the job, writes {'report': ...} or {'error': message} to result_fd."""
  job = json.loads(job_json)
  spec = job.pop('model_config')
  if isinstance(spec, dict):
    spec = ModelConfig.from_dict(spec)
  with os.fdopen(result_fd, 'w') as f:
    try:
      report = run(job.pop('ckpt'), job.pop('out'), model_config=spec, **job)
    except ConversionError as e:
      f.write(json.dumps({'error': str(e)}))
      return 2
    f.write(json.dumps({'report': {'converted': report.converted, 'unused': report.unused,
                                   'checks': report.checks}}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
