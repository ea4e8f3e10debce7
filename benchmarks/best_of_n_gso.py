"""Does hv_jax.scoring rank the ground-truth 16-view set above corrupted sets? (issue 20, docs/best_of_n.md)

  PYTHONPATH=. python benchmarks/best_of_n_gso.py --gso PATH/gso-eval [--objects a,b] [--seed 0]
      [--suite standard|mild] [--json F]

For every object folder of `--gso` (000..015.png RGBA, composited on white; the alpha is the mask; the input
is view 000 and its alpha), the candidates are the GT set and corrupted copies of it:
  azimuth   3 views (random indices) replaced by views of other azimuths of the same object (random, != own)
  object    3 views replaced by another object's views at the same indices (a random other object)
  blur3     3 views blurred, Gaussian sigma 2 px on the composited RGB and on the alpha
  blur_all  all 16 views blurred the same way (view 0 included, so only fidelity to the input can tell)
  colour3   3 views colour-shifted inside the object: hue rotated by 30-60 deg (random sign) and the value
            scaled by a gain in [0.75, 0.9] or [1.1, 1.25]
`--suite mild` makes each corruption subtler (1 view instead of 3, the replacing azimuth a neighbour 22.5 deg
away, sigma 1 px, hue 10-20 deg and gain 0.9-0.95 / 1.05-1.1) and adds `frozen` (view 0 repeated 16 times, a
sampler that did not turn the object): where the score stops telling, for docs/best_of_n.md's limits.
`--textureless` paints every object flat grey first (what the silhouettes alone can tell).
A corrupted view's mask is its own (blurred or swapped) alpha, as a segmentation of that image would give.
Corruptions are drawn from `--seed` and the object's position in the sorted list, so reruns score the same
sets. Prints the GT set's rank per object (1 = first), which candidate beat it, each term's cost per
candidate relative to GT (which term catches which corruption), and seconds per instance.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from PIL import Image
from scipy import ndimage

from hv_jax import scoring

CORRUPTIONS = ('azimuth', 'object', 'blur3', 'blur_all', 'colour3')
TERMS = tuple(scoring.WEIGHTS)


def load(folder: str):
  """(rgb [16, H, W, 3] on white, alpha [16, H, W]) float32."""
  a = np.stack([np.asarray(Image.open(os.path.join(folder, f'{i:03d}.png')).convert('RGBA'), np.float32) / 255
                for i in range(16)])
  return a[..., :3] * a[..., 3:] + (1 - a[..., 3:]), a[..., 3]


def blur(rgb, alpha, sigma=2.0):
  return (np.stack([ndimage.gaussian_filter(rgb[..., c], sigma) for c in range(3)], -1),
          ndimage.gaussian_filter(alpha, sigma))


def colour_shift(rgb, alpha, hue_deg, gain):
  """Hue rotation and value gain of the object's colours (un-composited from white, re-composited)."""
  from skimage import color
  a = alpha[..., None]
  obj = np.where(a > 1e-3, (rgb - (1 - a)) / np.maximum(a, 1e-3), 1.0).clip(0, 1)
  hsv = color.rgb2hsv(obj)
  hsv[..., 0] = (hsv[..., 0] + hue_deg / 360.0) % 1.0
  hsv[..., 2] = np.clip(hsv[..., 2] * gain, 0, 1)
  return (color.hsv2rgb(hsv) * a + (1 - a)).astype(np.float32)


SUITES = {
    # views corrupted, azimuth-replacement distance (steps of 22.5 deg), blur sigma, hue range, gain ranges
    'standard': {'views': 3, 'azimuth_steps': None, 'sigma': 2.0, 'hue': (30, 60),
                 'gain': ((0.75, 0.9), (1.1, 1.25))},
    'mild': {'views': 1, 'azimuth_steps': 1, 'sigma': 1.0, 'hue': (10, 20), 'gain': ((0.9, 0.95), (1.05, 1.1))},
}


def candidates(name, data, names, rng, suite='standard'):
  """{candidate: (rgb, masks, what)} for one object (SUITES[suite] sets how strong each corruption is)."""
  cfg = SUITES[suite]
  n = cfg['views']
  rgb, alpha = data[name]
  out = {'gt': (rgb, alpha, '')}
  idx = rng.choice(16, n, replace=False)
  if cfg['azimuth_steps'] is None:
    src = np.array([rng.choice([j for j in range(16) if j != k]) for k in idx])
  else:
    src = (idx + cfg['azimuth_steps'] * rng.choice([-1, 1], n)) % 16
  r, m = rgb.copy(), alpha.copy()
  r[idx], m[idx] = rgb[src], alpha[src]
  out['azimuth'] = (r, m, f'views {idx.tolist()} <- {src.tolist()}')
  other = rng.choice([o for o in names if o != name])
  idx = rng.choice(16, n, replace=False)
  r, m = rgb.copy(), alpha.copy()
  r[idx], m[idx] = data[other][0][idx], data[other][1][idx]
  out['object'] = (r, m, f'views {idx.tolist()} <- {other}')
  idx = rng.choice(16, n, replace=False)
  r, m = rgb.copy(), alpha.copy()
  for k in idx:
    r[k], m[k] = blur(rgb[k], alpha[k], cfg['sigma'])
  out['blur3'] = (r, m, f'views {idx.tolist()}')
  r, m = rgb.copy(), alpha.copy()
  for k in range(16):
    r[k], m[k] = blur(rgb[k], alpha[k], cfg['sigma'])
  out['blur_all'] = (r, m, 'all')
  idx = rng.choice(16, n, replace=False)
  r = rgb.copy()
  what = []
  for k in idx:
    hue = rng.uniform(*cfg['hue']) * rng.choice([-1, 1])
    gain = rng.uniform(*cfg['gain'][0]) if rng.random() < 0.5 else rng.uniform(*cfg['gain'][1])
    r[k] = colour_shift(rgb[k], alpha[k], hue, gain)
    what.append(f'{k}:{hue:+.0f}deg,x{gain:.2f}')
  out['colour3'] = (r, alpha.copy(), ' '.join(what))
  if suite == 'mild':
    out['frozen'] = (np.repeat(rgb[:1], 16, 0), np.repeat(alpha[:1], 16, 0), 'view 0 sixteen times')
  return out


class PlainMasks:
  """`plain` mattes of composited views [V, H, W, 3] -> [V, H, W], cached by image content (candidates share
  most views)."""

  def __init__(self):
    self.cache = {}

  def __call__(self, rgb):
    from hv_jax.data import matting
    out = []
    for img in rgb:
      u8 = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
      key = hash(u8.tobytes())
      if key not in self.cache:
        self.cache[key] = matting.matte_plain(u8)
      out.append(self.cache[key])
    return np.stack(out)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--gso', required=True)
  ap.add_argument('--objects', default='', help='comma-separated subset (default: every object folder)')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--suite', default='standard', choices=tuple(SUITES),
                  help="standard: the issue's corruptions; mild: 1 view, a neighbour azimuth, sigma 1, "
                       "hue 10-20 deg, gain 0.9-1.1, plus 'frozen' (view 0 repeated 16 times)")
  ap.add_argument('--masks', default='alpha', choices=('alpha', 'plain'),
                  help="alpha: each image's own alpha; plain: hv_jax.data.matting's `plain` matte of the "
                       "composited image (the pipeline's case: generated views have no alpha), input included")
  ap.add_argument('--textureless', action='store_true',
                  help='paint every object flat grey (0.5) before corrupting: what geometry alone tells')
  ap.add_argument('--json', default='')
  args = ap.parse_args(argv)
  names = sorted(d for d in os.listdir(args.gso) if os.path.isfile(os.path.join(args.gso, d, '000.png')))
  if not names:
    raise SystemExit(f'no object folders with 000.png in {args.gso}')
  chosen = [o for o in args.objects.split(',') if o] or names
  missing = [o for o in chosen if o not in names]
  if missing:
    raise SystemExit(f'unknown objects: {missing}')
  data = {o: load(os.path.join(args.gso, o)) for o in names}      # every object: the swap sources
  if args.textureless:
    data = {o: (np.repeat(1 - 0.5 * a[..., None], 3, -1), a) for o, (_, a) in data.items()}
  rows, seconds = [], []
  mattes = PlainMasks() if args.masks == 'plain' else None
  corruptions = CORRUPTIONS + (('frozen',) if args.suite == 'mild' else ())
  print(f'{len(chosen)} objects, {1 + len(corruptions)} candidates each, suite {args.suite}, seed {args.seed}, '
        f'masks {args.masks}{", textureless" if args.textureless else ""}', flush=True)
  for name in chosen:
    rng = np.random.default_rng([args.seed, names.index(name)])
    cands = candidates(name, data, names, rng, args.suite)
    rgb0, alpha0 = data[name][0][0], data[name][1][0]
    if mattes:
      alpha0 = mattes(rgb0[None])[0]
    scores = {}
    for key, (r, m, _) in cands.items():
      if mattes:
        m = mattes(r)
      t = time.perf_counter()
      scores[key] = scoring.score_instance(r, m, rgb0, alpha0)
      seconds.append(time.perf_counter() - t)
    keys = list(scores)
    order = [keys[k] for k in scoring.rank([scores[k] for k in keys])]
    gt_rank = order.index('gt') + 1
    beat = order[:gt_rank - 1]
    rows.append({'object': name, 'gt_rank': gt_rank, 'beaten_by': beat, 'scores': scores,
                 'corruptions': {k: v[2] for k, v in cands.items() if k != 'gt'}})
    deltas = ' '.join(f'{k}:{scores[k]["total"] - scores["gt"]["total"]:+.3f}' for k in corruptions)
    print(f'{name:14s} GT rank {gt_rank}/{len(keys)} {"beaten by " + ",".join(beat) if beat else ""}  '
          f'total-GT {deltas}', flush=True)

  n = len(rows)
  first = sum(r['gt_rank'] == 1 for r in rows)
  print(f'\nGT set ranked first: {first}/{n} objects ({100 * first / n:.0f}%); '
        f'seconds per instance: mean {np.mean(seconds):.2f}, max {np.max(seconds):.2f}')
  print('\n| object | GT rank | beaten by | ' + ' | '.join(f'{c} total - GT' for c in corruptions) + ' |')
  print('|---|---|---|' + '---|' * len(corruptions))
  for r in rows:
    sc = r['scores']
    print(f'| {r["object"]} | {r["gt_rank"]} | {", ".join(r["beaten_by"]) or "-"} | '
          + ' | '.join(f'{sc[c]["total"] - sc["gt"]["total"]:+.3f}' for c in corruptions) + ' |')
  # which term catches which corruption: objects whose corrupted set costs more than GT on that term
  print(f'\nObjects (of {n}) where the term alone ranks GT above the corruption (cost higher than GT by > 1e-6); '
        'mean weighted cost increase in brackets:')
  print('| corruption | ' + ' | '.join(TERMS) + ' | total |')
  print('|---|' + '---|' * (len(TERMS) + 1))
  for c in corruptions:
    cells = []
    for term in TERMS:
      d = np.array([r['scores'][c][term] - r['scores']['gt'][term] for r in rows])
      cells.append(f'{int((d > 1e-6).sum())} ({scoring.WEIGHTS[term] * d.mean():+.3f})')
    dt = np.array([r['scores']['gt']['total'] - r['scores'][c]['total'] for r in rows])
    cells.append(f'{int((dt > 0).sum())} ({dt.mean():+.3f})')
    print(f'| {c} | ' + ' | '.join(cells) + ' |')
  # ablation: the same costs with one term left out of the total
  print(f'\nAblation: objects (of {n}) whose GT set ranks first when the total leaves one term out:')
  print('| total | ' + ' | '.join(f'without {t}' for t in TERMS) + ' |')
  print('|---|' + '---|' * len(TERMS))
  cells = [f'{first}/{n}']
  for drop in TERMS:
    w = {t: scoring.WEIGHTS[t] for t in TERMS if t != drop}
    ok = 0
    for r in rows:
      tot = {k: -sum(w[t] * sc[t] for t in w) for k, sc in r['scores'].items()}
      ok += all(tot['gt'] > v for k, v in tot.items() if k != 'gt')
    cells.append(f'{ok}/{n}')
  print('| ' + ' | '.join(cells) + ' |')
  if args.json:
    from hv_jax import atomic
    atomic.write_json(args.json, {'seed': args.seed, 'suite': args.suite, 'masks': args.masks,
                                  'textureless': args.textureless, 'objects': rows,
                                  'seconds_per_instance': seconds})
  return 0 if first >= 0.9 * n else 1


if __name__ == '__main__':
  sys.exit(main())
