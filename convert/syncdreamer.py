"""Convert the original PyTorch SyncDreamer checkpoint (and OpenAI CLIP) to an orbax checkpoint of Flax params.

  python -m convert.syncdreamer --ckpt syncdreamer-pretrain.ckpt [--clip ViT-L-14.pt] --out DIR

Writes DIR/params (orbax), DIR/model_config.json and DIR/conversion.json (source hashes, counts and the
allow-listed unused keys). Tensors are read from a memory-mapped, weights-only torch.load and converted one
by one. Every key is accounted for: unmapped, missing and mis-shaped keys are listed by name and the
command exits non-zero with nothing left at --out (it writes to a temporary folder and renames at the end).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from convert import names


class ConversionError(Exception):
  """A user-facing conversion problem: printed as one clear line (plus the listed keys)."""


@dataclasses.dataclass
class Report:
  converted: int = 0
  unused: List[Tuple[str, str]] = dataclasses.field(default_factory=list)     # (key, reason)
  unmapped: List[str] = dataclasses.field(default_factory=list)
  misshaped: List[Tuple[str, str, tuple, tuple]] = dataclasses.field(default_factory=list)
  duplicate: List[str] = dataclasses.field(default_factory=list)
  missing: List[str] = dataclasses.field(default_factory=list)
  checks: List[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not (self.unmapped or self.misshaped or self.duplicate or self.missing)

  def problems(self) -> str:
    lines = []
    for k in self.unmapped:
      lines.append(f'  unexpected key (no mapping): {k}')
    for k, path, got, want in self.misshaped:
      lines.append(f'  mis-shaped key: {k} -> {path}: checkpoint gives {got}, model expects {want}')
    for k in self.duplicate:
      lines.append(f'  duplicate target (two keys map to it): {k}')
    for p in self.missing:
      lines.append(f'  missing (no checkpoint key provides it): {p}')
    return '\n'.join(lines)


# ----------------------------------------------------------------------------- loading

def load_state_dict(path: str, *, what: str = 'checkpoint') -> Dict[str, 'object']:
  """Loads a torch checkpoint without executing pickle code (weights_only, mmap).

  Accepts {'state_dict': {...}} (Lightning), a bare state_dict, or an OpenAI CLIP TorchScript archive.
  """
  if not os.path.isfile(path):
    raise ConversionError(f'{what} not found: {path}')
  try:
    import torch
  except ImportError as e:
    raise ConversionError('converting PyTorch checkpoints needs torch: pip install torch==2.13.0 '
                          '(CPU build; or pip install -e .[test])') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
  except Exception as e:  # noqa: BLE001  (torch raises many kinds for bad files)
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if 'TorchScript' in msg or 'constants.pkl' in msg:
      try:  # OpenAI's ViT-L-14.pt is a TorchScript archive: load its tensors, not Python code.
        return {k: v for k, v in torch.jit.load(path, map_location='cpu').state_dict().items()}
      except Exception as e2:  # noqa: BLE001
        raise ConversionError(f'{what} {path} is not a readable TorchScript archive: {e2}') from e2
    if 'Unsupported global' in msg or 'weights_only' in msg:
      raise ConversionError(f'{what} {path} contains pickled Python objects that a weights-only load refuses '
                            f'({msg}); re-save its state_dict with torch.save({{"state_dict": sd}}, path)')
    raise ConversionError(f'{what} {path} is not a readable PyTorch checkpoint (truncated or corrupt?): {msg}') from e
  if isinstance(obj, dict) and 'state_dict' in obj and isinstance(obj['state_dict'], dict):
    obj = obj['state_dict']
  if not isinstance(obj, dict) or not all(hasattr(v, 'shape') for v in obj.values()):
    raise ConversionError(f'{what} {path} holds no state_dict of tensors')
  return obj


def to_numpy(v) -> np.ndarray:
  """A torch tensor (floating types as float32) or array-like -> numpy array."""
  if hasattr(v, 'detach'):
    v = v.detach().cpu()
    v = v.float() if v.is_floating_point() else v
    return v.numpy()
  return np.asarray(v)


def sha256(path: str, chunk: int = 1 << 24) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    while True:
      b = f.read(chunk)
      if not b:
        return h.hexdigest()
      h.update(b)


# ----------------------------------------------------------------------------- mapping

def target_shapes(config) -> Dict[Tuple[str, ...], Tuple[tuple, object]]:
  """Flat {path: (shape, dtype)} of the Flax params, built by jax.eval_shape (no weights allocated)."""
  from flax import traverse_util
  from hv_jax.models.init import abstract_params
  flat = traverse_util.flatten_dict(abstract_params(config))
  return {k: (tuple(v.shape), v.dtype) for k, v in flat.items()}


def plan_key(key: str, shape: tuple, targets, report: Report, *, prefixes=names.PREFIXES,
             allowed=names.allowed_unused):
  """Maps one key onto `targets` ({path: (shape, dtype)}); returns (path, transform) or None.

  Allow-listed keys (`allowed(key)` gives a reason) go to report.unused, unmappable and mis-shaped ones to
  report.unmapped/misshaped.
  """
  reason = allowed(key)
  mapped = names.map_key(key, len(shape), prefixes)
  if mapped is None or mapped[0] not in targets:
    if reason is not None:
      report.unused.append((key, reason))
    else:
      report.unmapped.append(key if mapped is None else f'{key} (-> {"/".join(mapped[0])}, not in the model)')
    return None
  path, transform = mapped
  want = targets[path][0]
  if names.TRANSFORM_SHAPES[transform](tuple(shape)) != want:
    report.misshaped.append((key, '/'.join(path), tuple(shape), want))
    return None
  return mapped


def convert_tensors(items: Iterable[Tuple[str, object]], targets, report: Report, *,
                    prefixes=names.PREFIXES, allowed=names.allowed_unused,
                    progress=None) -> Dict[Tuple[str, ...], np.ndarray]:
  """Maps and converts (key, tensor) pairs one by one onto `targets`; records every problem in `report`."""
  out: Dict[Tuple[str, ...], np.ndarray] = {}
  sources: Dict[Tuple[str, ...], str] = {}
  for key, tensor in items:
    if progress is not None:
      progress.update(1)
    mapped = plan_key(key, tuple(tensor.shape), targets, report, prefixes=prefixes, allowed=allowed)
    if mapped is None:
      continue
    path, transform = mapped
    if path in sources:
      report.duplicate.append(f'{"/".join(path)} <- {sources[path]}, {key}')
      continue
    arr = tensor.detach().float().numpy() if hasattr(tensor, 'detach') else np.asarray(tensor, np.float32)
    out[path] = np.ascontiguousarray(names.TRANSFORMS[transform](arr)).astype(np.float32)
    sources[path] = key
    report.converted += 1
  return out


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
  from hv_jax.sampling import schedule
  for key, ref in (('betas', schedule.betas()), ('alphas_cumprod', schedule.alphas_cumprod())):
    if key in state_dict:
      got = state_dict[key].float().numpy()
      err = float(np.max(np.abs(got - ref))) if got.shape == ref.shape else float('inf')
      if err > 1e-6:
        raise ConversionError(f'checkpoint buffer {key} differs from the scaled-linear schedule (max err {err})')
      report.checks.append(f'{key}: equal to hv_jax.sampling.schedule (max abs err {err:.1e})')


def convert(ckpt: str, config, clip: Optional[str] = None, progress: bool = True):
  """Returns (nested params dict of numpy arrays, Report). Raises ConversionError on any problem."""
  from flax import traverse_util
  sd = load_state_dict(ckpt)
  if not any(k.startswith('model.diffusion_model.') for k in sd):
    raise ConversionError(f'{ckpt} is not a SyncDreamer checkpoint: no model.diffusion_model.* keys '
                          f'(found e.g. {sorted(sd)[:3]})')
  targets = target_shapes(config)
  report = Report()
  bar = _progress(len(sd) + (0 if clip is None else 1), progress)
  flat = convert_tensors(sd.items(), targets, report, progress=bar)
  check_buffers(sd, report)
  has_clip = any(p[0] == 'clip' for p in flat)
  if clip is not None:
    if has_clip:
      report.checks.append(f'CLIP tower taken from {clip} (overrides the copy inside the checkpoint)')
      flat = {p: v for p, v in flat.items() if p[0] != 'clip'}
    csd = load_state_dict(clip, what='CLIP checkpoint')
    flat.update(convert_tensors(csd.items(), targets, report, prefixes=names.CLIP_FILE_PREFIXES))
  elif not has_clip:
    raise ConversionError(f'{ckpt} has no clip_image_encoder.model.visual.* weights: pass the OpenAI CLIP '
                          'file with --clip ViT-L-14.pt')
  if bar is not None:
    bar.close()
  misshaped = {m[1] for m in report.misshaped}
  report.missing = ['/'.join(p) for p in targets if p not in flat and '/'.join(p) not in misshaped]
  if not report.ok:
    raise ConversionError(f'{ckpt} does not match the model config ({len(report.unmapped)} unexpected, '
                          f'{len(report.missing)} missing, {len(report.misshaped)} mis-shaped keys):\n'
                          + report.problems())
  return traverse_util.unflatten_dict(flat), report


def _progress(total, enabled):
  if not enabled:
    return None
  try:
    from tqdm import tqdm
  except ImportError:
    return None
  return tqdm(total=total, desc='converting', unit='tensor', file=sys.stderr)


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
  import argparse
  parser = argparse.ArgumentParser(prog='python -m convert.syncdreamer', description=__doc__.splitlines()[0])
  parser.add_argument('--ckpt', required=True, help='syncdreamer-pretrain.ckpt (PyTorch Lightning checkpoint)')
  parser.add_argument('--clip', default=None, help='OpenAI CLIP ViT-L-14.pt, if the .ckpt lacks the CLIP tower')
  parser.add_argument('--out', required=True, help='output directory (must not exist, or use --overwrite)')
  parser.add_argument('--model-config', default=None,
                      help='model dims as JSON (default: the full-size SyncDreamer); a parity config.json works')
  parser.add_argument('--overwrite', action='store_true')
  parser.add_argument('--quiet', action='store_true')
  args = parser.parse_args(argv)
  try:
    run(args.ckpt, args.out, clip=args.clip, model_config=args.model_config, overwrite=args.overwrite,
        verbose=not args.quiet)
  except ConversionError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


def load_model_config(path: Optional[str]):
  from hv_jax.models.config import ModelConfig
  if path is None:
    return ModelConfig.full()
  try:
    with open(path) as f:
      d = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ConversionError(f'cannot read model config {path}: {e}') from e
  return ModelConfig.from_dict(d.get('tiny', d))


def run(ckpt: str, out: str, *, clip=None, model_config=None, overwrite=False, verbose=True):
  """Converts and writes atomically; returns the Report."""
  from hv_jax import checkpoint
  config = load_model_config(model_config)
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise ConversionError(f'{out} exists; choose another --out or pass --overwrite')
  parent = os.path.dirname(out)
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.convert-', dir=parent)
  except OSError as e:
    raise ConversionError(f'cannot write to {parent}: {e}') from e
  try:
    params, report = convert(ckpt, config, clip=clip, progress=verbose)
    meta = {'source': {'ckpt': os.path.abspath(ckpt), 'ckpt_sha256': sha256(ckpt)},
            'converted_keys': report.converted,
            'unused_keys': [{'key': k, 'reason': r} for k, r in report.unused],
            'checks': report.checks}
    if clip is not None:
      meta['source'].update(clip=os.path.abspath(clip), clip_sha256=sha256(clip))
    checkpoint.save(os.path.join(tmp, 'ckpt'), params, config, meta)
    if os.path.exists(out):
      shutil.rmtree(out)
    os.replace(os.path.join(tmp, 'ckpt'), out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  if verbose:
    print(f'converted {report.converted} tensors -> {out}')
    print(f'{len(report.unused)} checkpoint keys are unused on purpose (allow-list):')
    for reason in sorted({r for _, r in report.unused}):
      keys = [k for k, r in report.unused if r == reason]
      print(f'  {len(keys):4d}  {reason}: {", ".join(keys[:4])}{" ..." if len(keys) > 4 else ""}')
    for c in report.checks:
      print(f'  check: {c}')
  return report


if __name__ == '__main__':
  sys.exit(main())
