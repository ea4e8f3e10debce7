"""Convert LPIPS-VGG weights (torchvision VGG16 + lpips' linear heads) to hv_jax.metrics.lpips params.

  params = convert.lpips.load(vgg='vgg16-397923af.pth')     # heads from the installed lpips package
  params = convert.lpips.load(vgg='vgg16.pth', lin='lpips/weights/v0.1/vgg.pth')
  params = convert.lpips.load(lpips_state='sd.pth')         # torch.save(lpips.LPIPS(net='vgg').state_dict())
  python -m convert.lpips --config.vgg=vgg16-397923af.pth [--config.lin=vgg.pth] --config.out=lpips_vgg.npz

Accepted keys (any mix of state dicts, each tensor provided exactly once):
- torchvision `vgg16().state_dict()`: features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias} ->
  net/features_{i}; the classifier.{0,3,6}.{weight,bias} keys are allow-listed by name and ignored (lpips uses
  `features` only).
- lpips heads file (weights/v0.1/vgg.pth): lin{0..4}.model.1.weight [1, C, 1, 1] -> lin{k}/kernel [1, 1, C, 1].
- `lpips.LPIPS(net='vgg').state_dict()`: net.slice{1..5}.{i}.{weight,bias} (i = the torchvision index, in the
  slice lpips puts it: 0-3, 4-8, 9-15, 16-22, 23-29), lin{k}.model.1.weight plus its alias lins.{k}.model.1.weight
  (the ModuleList registers each head twice; the two must be equal), and the ScalingLayer buffers
  scaling_layer.{shift,scale}, which must equal the constants hv_jax hard-codes.
Conv weights go OIHW -> HWIO here, once. Missing, unexpected, mis-shaped, duplicated or non-finite keys are
listed by name in one ConversionError; nothing is dropped silently.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
from flax import traverse_util

from convert.torch_io import ConversionError, load_state_dict, to_numpy
from hv_jax import cli, settings
from hv_jax.errors import UserError
from hv_jax.metrics import lpips
from hv_jax.metrics.lpips import save_npz

# torchvision VGG16 classifier: Linear 25088->4096, ReLU, Dropout, Linear 4096->4096, ReLU, Dropout, Linear ->1000.
TORCHVISION_UNUSED = {f'classifier.{i}.{p}': 'torchvision VGG16 classifier head (lpips uses features only)'
                      for i in (0, 3, 6) for p in ('weight', 'bias')}
LPIPS_SLICES = ((0, 3), (4, 8), (9, 15), (16, 22), (23, 29))   # pretrained_networks.vgg16 slice{1..5}, inclusive
_FEATURE = re.compile(r'^features\.(\d+)\.(weight|bias)$')
_SLICE = re.compile(r'^net\.slice([1-5])\.(\d+)\.(weight|bias)$')
_LIN = re.compile(r'^(?:lin|lins\.)(\d+)\.model\.1\.weight$')   # lin{k} and its ModuleList alias lins.{k}




def _target(key: str) -> Optional[Tuple[str, ...]]:
  """Param path a key fills, or None when it maps nowhere (checked against the model's layout later)."""
  m = _FEATURE.match(key)
  if m:
    return ('net', f'features_{m.group(1)}', 'kernel' if m.group(2) == 'weight' else 'bias')
  m = _SLICE.match(key)
  if m:
    lo, hi = LPIPS_SLICES[int(m.group(1)) - 1]
    if not lo <= int(m.group(2)) <= hi:
      return None
    return ('net', f'features_{m.group(2)}', 'kernel' if m.group(3) == 'weight' else 'bias')
  m = _LIN.match(key)
  if m and int(m.group(1)) < len(lpips.LIN_CHANNELS):
    return (f'lin{m.group(1)}', 'kernel')
  return None


def torch_shape(shape: tuple) -> tuple:
  """Flax [kh, kw, I, O] -> torch [O, I, kh, kw]; biases unchanged."""
  return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def convert_state_dicts(*state_dicts: Mapping[str, object]) -> dict:
  """One or more state dicts (torch tensors or numpy arrays) -> nested params dict of float32 numpy arrays."""
  shapes = lpips.param_shapes()
  problems: List[str] = []
  sources: Dict[Tuple[str, ...], str] = {}
  seen = set()   # paths some key tried to fill (a mis-shaped one is not also reported as missing)
  flat: Dict[Tuple[str, ...], np.ndarray] = {}
  aliases: List[Tuple[str, Tuple[str, ...], np.ndarray]] = []
  for sd in state_dicts:
    for key, value in sd.items():
      if key in TORCHVISION_UNUSED:
        continue
      if key in ('scaling_layer.shift', 'scaling_layer.scale'):
        want = lpips.SHIFT if key.endswith('shift') else lpips.SCALE
        got = to_numpy(value).astype(np.float32)
        if got.shape != (1, 3, 1, 1) or not np.allclose(got.reshape(3), want, rtol=0, atol=1e-7):
          problems.append(f'  buffer differs from lpips.ScalingLayer: {key} = {got.reshape(-1).tolist()}, '
                          f'expected {want.tolist()} in shape (1, 3, 1, 1)')
        continue
      path = _target(key)
      if path is None or path not in shapes:
        problems.append(f'  unexpected key: {key}')
        continue
      got, want = tuple(value.shape), torch_shape(shapes[path])
      seen.add(path)
      if got != want:
        problems.append(f'  mis-shaped key: {key}: checkpoint gives {got}, LPIPS-VGG expects {want}')
        continue
      if path in sources and _is_alias(key, sources[path]):
        aliases.append((key, path, to_numpy(value).astype(np.float32)))
        continue
      if path in sources:
        problems.append(f'  duplicate: {key} and {sources[path]} both provide {"/".join(path)}')
        continue
      arr = to_numpy(value).astype(np.float32)
      if not np.all(np.isfinite(arr)):
        problems.append(f'  non-finite values in {key}')
        continue
      sources[path] = key
      flat[path] = np.ascontiguousarray(arr.transpose(2, 3, 1, 0) if arr.ndim == 4 else arr)
  for key, path, arr in aliases:   # LPIPS registers each head twice (lin{k} and lins.{k}): one tensor
    if path in flat and not np.array_equal(arr.transpose(2, 3, 1, 0), flat[path]):
      problems.append(f'  aliased keys disagree: {key} != {sources[path]}')
  for path, shape in shapes.items():
    if path not in seen:
      problems.append(f'  missing: {" or ".join(_torch_keys(path))} {torch_shape(shape)}')
  if problems:
    raise ConversionError(f'LPIPS-VGG weights do not match torchvision vgg16 features + lpips heads '
                          f'({len(problems)} problems):\n' + '\n'.join(problems))
  return traverse_util.unflatten_dict(flat)


def _is_alias(a: str, b: str) -> bool:
  """Two keys for one head: lin{k}.model.1.weight and lins.{k}.model.1.weight (LPIPS.state_dict has both)."""
  return a.startswith('lins.') != b.startswith('lins.')   # both already map to the same lin{k}


def _torch_keys(path: Tuple[str, ...]) -> Tuple[str, ...]:
  """The keys that may provide `path` (for 'missing' messages): torchvision's and lpips' names."""
  if path[0] == 'net':
    i = int(path[1].split('_')[1])
    leaf = 'weight' if path[2] == 'kernel' else 'bias'
    s = next(n for n, (lo, hi) in enumerate(LPIPS_SLICES, 1) if lo <= i <= hi)
    return (f'features.{i}.{leaf}', f'net.slice{s}.{i}.{leaf}')
  return (f'{path[0]}.model.1.weight',)


# ----------------------------------------------------------------------------- files

def lpips_package_heads() -> str:
  """Path of weights/v0.1/vgg.pth inside the installed lpips package (found without importing it)."""
  spec = importlib.util.find_spec('lpips')
  if spec is None or not spec.submodule_search_locations:
    raise ConversionError('the lpips package is not installed: pass the heads file with lin= / --config.lin='
                          '(lpips/weights/v0.1/vgg.pth from github.com/richzhang/PerceptualSimilarity)')
  return os.path.join(list(spec.submodule_search_locations)[0], 'weights', 'v0.1', 'vgg.pth')


def load(vgg: Optional[str] = None, lin: Optional[str] = None, lpips_state: Optional[str] = None) -> dict:
  """Params from torchvision's VGG16 file (+ the heads file, default: the lpips package's) or from a saved
  `lpips.LPIPS(net='vgg').state_dict()`. ConversionError if a file is missing, unreadable or mismatched."""
  if (vgg is None) == (lpips_state is None):
    raise ConversionError('pass either vgg= (torchvision VGG16 weights, plus lin=) or lpips_state=')
  if lpips_state is not None:
    sds = [load_state_dict(lpips_state, what='LPIPS state dict')]
    if lin is not None:
      sds.append(load_state_dict(lin, what='LPIPS heads file'))
    return convert_state_dicts(*sds)
  lin = lpips_package_heads() if lin is None else lin
  return convert_state_dicts(load_state_dict(vgg, what='VGG16 weights'),
                            load_state_dict(lin, what='LPIPS heads file'))


@dataclasses.dataclass(frozen=True)
class ConvertSettings:
  """Every setting of `python -m convert.lpips`."""
  vgg: str = ''               # torchvision vgg16 weights (e.g. vgg16-397923af.pth)
  lin: str = ''               # lpips heads file (default: the installed lpips package's v0.1/vgg.pth)
  lpips_state: str = ''       # torch.save(lpips.LPIPS(net="vgg").state_dict()) instead of vgg
  out: str = ''               # output .npz


def convert_cli(s: ConvertSettings) -> int:
  if not s.out:
    raise UserError('no out: set --config.out=PATH.npz (the converted params)')
  if bool(s.vgg) == bool(s.lpips_state):
    raise UserError('set either --config.vgg=PATH (torchvision VGG16 weights, heads from --config.lin) or '
                    '--config.lpips_state=PATH')
  try:
    save_npz(load(vgg=s.vgg or None, lin=s.lin or None, lpips_state=s.lpips_state or None), s.out)
  except ConversionError as e:
    print(f'error: {e}', file=sys.stderr)   # the message, then every offending key on its own line
    return 2
  print(f'wrote {s.out}')
  return 0


def main(argv=None) -> int:
  return cli.main(argv, ConvertSettings, convert_cli, prog='python -m convert.lpips', doc=__doc__,
                  default=lambda: settings.config_dict(ConvertSettings))


if __name__ == '__main__':
  sys.exit(main())
