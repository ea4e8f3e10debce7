"""The torch side of every converter: reading PyTorch weight files and mapping their tensors onto Flax params.

One place for what convert.syncdreamer, convert.clip, convert.lpips, convert.raft and convert.neus share:

  load_state_dict(path)      a weights-only torch.load (memory-mapped when the file allows it): Lightning
                             {'state_dict': ...}, a bare state dict, or an OpenAI TorchScript archive
  to_numpy(tensor)           a tensor (floating types as float32) or array-like -> numpy
  convert_tensors(...)       (key, tensor) pairs -> {Flax path: float32 array} through the tables of
                             `convert.names`, every problem recorded in a `Report`
  ConversionError            the one error type (hv_jax.errors.ConversionError, a UserError)

torch is imported only by `torch_module`, when a file is read: the hv_jax library and loading converted
weights (orbax, .npz) never import it, nor anything of `convert/`.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import mmap
import os
import sys
from typing import Dict, Iterable, List, Tuple

import numpy as np

from convert import names
from hv_jax.errors import ConversionError

__all__ = ['ConversionError', 'Report', 'convert_tensors', 'load_state_dict', 'plan_key', 'release_pages',
           'to_numpy', 'torch_module']


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

def torch_module():
  """torch, imported on first use (lazy: an optional dependency, needed only to read PyTorch files)."""
  try:
    import torch  # lazy: optional heavy dependency (see the module docstring)
  except ImportError as e:
    raise ConversionError('converting PyTorch checkpoints needs torch: pip install torch==2.13.0 '
                          '(CPU build; or pip install -e .[test])') from e
  return torch


def load_state_dict(path: str, *, what: str = 'checkpoint') -> Dict[str, 'object']:
  """Loads a torch checkpoint without executing pickle code (weights_only), memory-mapped.

  Accepts {'state_dict': {...}} (Lightning), a bare state_dict, or an OpenAI CLIP TorchScript archive. A file
  in the legacy (pre-zip, torch < 1.6) format, e.g. torchvision's vgg16 or lpips' heads, cannot be
  memory-mapped and is read whole.
  """
  if not os.path.isfile(path):
    raise ConversionError(f'{what} not found: {path}')
  torch = torch_module()
  try:
    # A zip archive (torch >= 1.6) is memory-mapped; the legacy format (a pickle stream) cannot be, and is read
    # whole; anything else is refused as unreadable rather than handed to the unpickler.
    with open(path, 'rb') as f:
      head = f.read(4)
    if head[:1] == _PICKLE_PROTO:
      obj = torch.load(path, map_location='cpu', weights_only=True)
    else:
      obj = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
  except Exception as e:  # noqa: BLE001  (torch raises many kinds for bad files)
    msg = _first_line(e)
    if 'mmap can only be used' in msg:       # neither a zip archive nor a legacy torch file
      msg = 'neither a zip archive (torch.save) nor a legacy (pickle) torch file'
    if 'TorchScript' in msg or 'constants.pkl' in msg:
      try:  # OpenAI's ViT-L-14.pt is a TorchScript archive: load its tensors, not Python code.
        return {k: v for k, v in torch.jit.load(path, map_location='cpu').state_dict().items()}
      except Exception as e2:  # noqa: BLE001
        raise ConversionError(f'{what} {path} is not a readable TorchScript archive: {e2}') from e2
    if 'Unsupported global' in msg or 'weights_only' in msg:
      raise ConversionError(f'{what} {path} contains pickled Python objects that a weights-only load refuses '
                            f'({msg}); re-save its state_dict with torch.save({{"state_dict": sd}}, path)')
    raise ConversionError(f'{what} {path} is not a readable PyTorch checkpoint (truncated or corrupt?): {msg}') from e
  if isinstance(obj, dict) and isinstance(obj.get('state_dict'), dict):
    obj = obj['state_dict']
  if not isinstance(obj, dict) or not obj or not all(hasattr(v, 'shape') for v in obj.values()):
    raise ConversionError(f'{what} {path} holds no state_dict of tensors')
  return obj


_PICKLE_PROTO = b'\x80'   # a pickle stream (protocol >= 2) starts so: a legacy torch file (torch.save before 1.6)


def _first_line(e: BaseException) -> str:
  return str(e).splitlines()[0] if str(e) else type(e).__name__


def to_numpy(v) -> np.ndarray:
  """A torch tensor (floating types as float32) or array-like -> numpy array."""
  if hasattr(v, 'detach'):
    v = v.detach().cpu()
    v = v.float() if v.is_floating_point() else v
    return v.numpy()
  return np.asarray(v)


# ----------------------------------------------------------------------------- mapping

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


_MADV_PAGEOUT = 21   # Linux >= 5.4: reclaim these pages now (file pages are dropped, never lost)


@functools.lru_cache(maxsize=1)
def _madvise():
  if not sys.platform.startswith('linux'):
    return None
  try:
    fn = ctypes.CDLL(None, use_errno=True).madvise
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn
  except (OSError, AttributeError):  # pragma: no cover
    return None


def release_pages(tensor) -> None:
  """Gives back the resident pages of a converted tensor of the memory-mapped checkpoint (MADV_PAGEOUT).

  Reading a tensor of the mmap'd file maps its pages into this process; without this they stay resident
  until the whole state dict is dropped, adding the checkpoint's size (5.2 GiB at full size) to the
  converter's peak. The hint never changes data: clean file pages are re-read if touched again, and
  anonymous pages stay (or go to swap). Only whole pages inside the tensor's storage are advised; a no-op
  where madvise or MADV_PAGEOUT is unavailable.
  """
  fn = _madvise()
  if fn is None or not hasattr(tensor, 'untyped_storage'):
    return
  try:
    storage = tensor.untyped_storage()
    ptr, n = storage.data_ptr(), storage.nbytes()
  except Exception:  # noqa: BLE001  (not a plain CPU storage)
    return
  page = mmap.PAGESIZE
  start, end = -(-ptr // page) * page, (ptr + n) // page * page
  if end > start:
    fn(start, end - start, _MADV_PAGEOUT)


def convert_tensors(items: Iterable[Tuple[str, object]], targets, report: Report, *,
                    prefixes=names.PREFIXES, allowed=names.allowed_unused,
                    progress=None, release: bool = False) -> Dict[Tuple[str, ...], np.ndarray]:
  """Maps and converts (key, tensor) pairs one by one onto `targets`; records every problem in `report`.

  release=True gives each converted tensor's pages back (`release_pages`; for a memory-mapped checkpoint).
  """
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
    del arr
    if release:
      release_pages(tensor)
    sources[path] = key
    report.converted += 1
  return out
