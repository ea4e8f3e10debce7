"""The report of a diversity study: a table per guidance setting, plots, and one self-contained HTML page.

  python -m experiments.report --config.results=RESULTS [--config.out=RESULTS/report] [--config.strip_width=2048]

RESULTS is a study folder (`experiments/store.py`). Writes into OUT (ReportSettings below: every setting):
  table.md, table.csv   one row per setting ('none', then CFG by scale, then HarmonyView by s1, s2): units,
                        inputs, mean ± std over units of PSNR, SSIM, LPIPS, E_flow, and the CD score
  cd_vs_s2.png          CD score against s2, a line per s1 (CFG / no guidance as horizontal reference lines)
  psnr_vs_s1.png        PSNR against s1, a line per s2
  eflow_vs_s1.png       E_flow against s1, a line per s2
  tradeoff.png          consistency (E_flow, or PSNR without it) against diversity (CD score), every setting a
                        labelled point, the paper's HarmonyView and SyncDreamer as reference points
  index.html            all of the above plus, per input, its input view and every unit's strip with its
                        metrics; images are embedded as data URIs, so the page works when copied alone

The CD score of a setting is a ratio of means over its units, mean(D) / mean(S_var), as the original
eval_CD_score.py + run_CD_stastics compute it over a set (not a mean of per-unit ratios); its ± is the std
of that ratio over bootstrap resamples of the inputs. Everything is computed in memory first and each file is
written atomically: a failure leaves no partial file. A missing folder or a study without finished units is
one line on stderr and exit code 2, with nothing written. When study.json says random_weights, every output
says so.
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import math
import pathlib
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from experiments import store
from hv_jax import atomic, checks
from hv_jax import cli, optional
from hv_jax import settings as settings_lib
from hv_jax.errors import UserError
from hv_jax.metrics import stats
from hv_jax.sampling import modes

UNIT_METRICS = ('psnr', 'ssim', 'lpips', 'e_flow')   # mean ± std over units
DIGITS = {'psnr': 2, 'ssim': 4, 'lpips': 4, 'e_flow': 3, 'cd_score': 4}
BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0
RANDOM_BANNER = 'RANDOM WEIGHTS — numbers mean nothing'
PLOTS = ('cd_vs_s2.png', 'psnr_vs_s1.png', 'eflow_vs_s1.png', 'tradeoff.png')
# The paper's comparisons (Table 1/2): HarmonyView at s1=2, s2=1; SyncDreamer is CFG at scale 2.
PAPER_SETTINGS = {'HarmonyView': store.setting_name('harmonyview', (2, 1)),   # 'harmonyview_s1=2_s2=1'
                  'SyncDreamer': store.setting_name('cfg', (2,))}              # 'cfg_s=2'
INPUT_WIDTH = 512   # the input view's thumbnail

Stat = Tuple[float, float, int]   # (value, std, count)


# ----------------------------------------------------------------------------- statistics

def mean_std(values: Sequence[float]) -> Stat:
  """Mean and population std (np.std) over the available (non-NaN) values, and their count."""
  v = np.asarray(values, np.float64)
  v = v[~np.isnan(v)]
  if not len(v):
    return math.nan, math.nan, 0
  with np.errstate(invalid='ignore'):   # PSNR of identical images is +inf: mean inf, std nan
    return float(v.mean()), float(v.std()), len(v)


def cd_score(rows: Sequence[Dict], resamples: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> Stat:
  """(mean(D) / mean(S_var) over the units with both terms, bootstrap std over inputs, inputs counted).

  The bootstrap draws the setting's inputs with replacement (numpy default_rng(seed), `resamples` draws of
  as many inputs as it has) and takes the std of the ratio of means over all units of the drawn inputs.
  With a single input there is nothing to resample: the std is NaN.
  """
  ok = [r for r in rows if np.isfinite(r['cd_D']) and np.isfinite(r['cd_S_var'])]
  if not ok:
    return math.nan, math.nan, 0
  inputs = sorted({r['input'] for r in ok})
  pos = {name: i for i, name in enumerate(inputs)}
  d, s = np.zeros(len(inputs)), np.zeros(len(inputs))
  for r in ok:   # the same units enter both means, so the ratio of means is a ratio of sums
    d[pos[r['input']]] += r['cd_D']
    s[pos[r['input']]] += r['cd_S_var']
  score = float(d.sum() / s.sum()) if s.sum() else math.nan
  if len(inputs) < 2:
    return score, math.nan, 1
  draws = np.random.default_rng(seed).integers(0, len(inputs), size=(resamples, len(inputs)))
  with np.errstate(divide='ignore', invalid='ignore'):
    ratios = d[draws].sum(1) / s[draws].sum(1)
  ratios = ratios[np.isfinite(ratios)]
  return score, float(ratios.std()) if len(ratios) else math.nan, len(inputs)


def setting_key(row: Dict):
  """Modes in the order of modes.MODES ('none', then CFG by scale, then HarmonyView by (s1, s2)); unknown modes
  last, by name."""
  order = list(modes.MODES)
  mode = modes.MODES.get(row['mode'])
  nums = [row[c] for c in mode.columns] if mode else []
  return ((order.index(mode.name) if mode else len(order)),) + tuple(
      -math.inf if math.isnan(x) else x for x in nums) + (row['setting'],)


def summarize(rows: Sequence[Dict]) -> List[Dict]:
  """One dict per setting, sorted by `setting_key`: its scales, counts, and a Stat per metric."""
  by_setting: Dict[str, List[Dict]] = {}
  for r in rows:
    by_setting.setdefault(r['setting'], []).append(r)
  out = []
  for name, rs in by_setting.items():
    s = {k: rs[0][k] for k in ('setting', 'mode', 's1', 's2', 'cfg')}
    s['units'] = len(rs)
    s['inputs'] = len({r['input'] for r in rs})
    for m in UNIT_METRICS:
      s[m] = mean_std([r[m] for r in rs])
    s['cd_score'] = cd_score(rs)
    out.append(s)
  return sorted(out, key=setting_key)


def label(s: Dict, scales: Optional[int] = None) -> str:
  """A setting for people: 'HarmonyView s1=2 s2=1', 'CFG s=3', 'no guidance' (its mode's label); with
  `scales`, only its first ones: the family of settings along the rest ('HarmonyView s1=2', 'CFG')."""
  mode = modes.MODES.get(s['mode'])
  if mode is None:
    return s['setting']
  return mode.label([s[c] for c in mode.columns][:scales])


# ----------------------------------------------------------------------------- tables

def num(x: float, digits: int) -> str:
  if math.isnan(x):
    return 'n/a'
  return ('∞' if x > 0 else '-∞') if math.isinf(x) else f'{x:.{digits}f}'


def cell(stat: Stat, metric: str, units: int, unit_word: str = 'n') -> str:
  """'20.12 ± 0.53', '(n=3)' appended when only some units have the metric, 'n/a' when none has."""
  value, std, n = stat
  if n == 0 or math.isnan(value):
    return 'n/a'
  text = num(value, DIGITS[metric]) + ('' if math.isnan(std) else ' ± ' + num(std, DIGITS[metric]))
  return text + (f' ({unit_word}={n})' if n < units else '')


HEADER = ('setting', 'units', 'inputs') + tuple(stats.LABELS[m] for m in UNIT_METRICS + ('cd_score',))


def table_cells(summary: Sequence[Dict]) -> List[List[str]]:
  return [[s['setting'], str(s['units']), str(s['inputs'])] +
          [cell(s[m], m, s['units']) for m in UNIT_METRICS] +
          [cell(s['cd_score'], 'cd_score', s['inputs'], 'inputs')] for s in summary]


def footnotes(summary: Sequence[Dict]) -> List[str]:
  present = {s['setting'] for s in summary}
  notes = [
      'PSNR, SSIM, LPIPS (against the ground-truth views) and E_flow (optical-flow consistency of neighbouring '
      'views): mean ± population std (np.std) over the setting\'s units; "(n=k)": only k units have the metric; '
      'n/a: no unit has it.',
      f'CD score: ratio of means over the setting\'s units, mean(D) / mean(S_var), as eval_CD_score.py + '
      f'run_CD_stastics (not a mean of per-unit ratios); ± is the std of that ratio over {BOOTSTRAP} bootstrap '
      f'resamples of the setting\'s inputs (with replacement, numpy default_rng({BOOTSTRAP_SEED})); no ± with a '
      'single input; "(inputs=k)": only k inputs have the CD terms.',
  ]
  ref = '; '.join(
      f"{name} = `{tag}`{'' if tag in present else ' (not in this study)'}: " +
      ', '.join(f"{stats.LABELS[m]} {stats.PAPER[name][m]}" for m in UNIT_METRICS + ('cd_score',))
      for name, tag in PAPER_SETTINGS.items())
  notes.append(f'Paper (Table 1/2, GSO, generated views): {ref}.')
  return notes


def table_md(summary: Sequence[Dict], study_name: str, random_weights: bool) -> str:
  lines = [f'# Diversity study {study_name}', '']
  if random_weights:
    lines += [f'**{RANDOM_BANNER}**', '']
  lines += ['| ' + ' | '.join(HEADER) + ' |', '|' + '---|' * len(HEADER)]
  lines += ['| `' + c[0] + '` | ' + ' | '.join(c[1:]) + ' |' for c in table_cells(summary)]
  lines += [''] + [f'- {n}' for n in footnotes(summary)]
  return '\n'.join(lines) + '\n'


def table_csv(summary: Sequence[Dict], random_weights: bool) -> str:
  """Machine-readable: full precision, 'n/a' where unavailable; a WARNING column on every row with random
  weights."""
  val = lambda x: 'n/a' if math.isnan(x) else repr(float(x))
  header = ['setting', 'mode', 's1', 's2', 'cfg', 'units', 'inputs']
  for m in UNIT_METRICS:
    header += [f'{m}_mean', f'{m}_std', f'{m}_n']
  header += ['cd_score', 'cd_score_std', 'cd_inputs']
  rows = []
  for s in summary:
    row = [s['setting'], s['mode'], val(s['s1']), val(s['s2']), val(s['cfg']), s['units'], s['inputs']]
    for m in UNIT_METRICS + ('cd_score',):
      row += [val(s[m][0]), val(s[m][1]), s[m][2]]
    rows.append(([RANDOM_BANNER] if random_weights else []) + row)
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator='\n')
  w.writerow((['WARNING'] if random_weights else []) + header)
  w.writerows(rows)
  return buf.getvalue()


# ----------------------------------------------------------------------------- plots

def _png(fig, random_weights: bool) -> bytes:
  if random_weights:
    fig.suptitle(RANDOM_BANNER, color='#c00000', fontweight='bold')
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=100)
  optional.pyplot().close(fig)
  return buf.getvalue()


def _unavailable(ax, what: str) -> None:
  ax.text(0.5, 0.5, f'{what} unavailable', transform=ax.transAxes, ha='center', va='center', color='#777777')


def _name(metric: str) -> str:
  return stats.LABELS[metric].rsplit(' ', 1)[0]   # without the arrow


def _finite(x) -> bool:
  return not math.isnan(x)


def plot_against(summary: Sequence[Dict], metric: str, x: str, group: str, random_weights: bool) -> bytes:
  """`metric` of the HarmonyView settings against scale `x`, one line per value of scale `group`; the
  other settings (CFG, no guidance) as labelled horizontal lines, since they have no s1/s2."""
  plt = optional.pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  gridded = lambda s: s['mode'] in modes.MODES and {x, group} <= set(modes.MODES[s['mode']].columns)   # HarmonyView
  hv = [s for s in summary if gridded(s) and _finite(s[metric][0]) and _finite(s[x])]
  for title, g in sorted({(modes.MODES[s['mode']].title, s[group]) for s in hv}):
    pts = sorted((s[x], s[metric][0], s[metric][1] if _finite(s[metric][1]) else 0.) for s in hv
                 if s[group] == g and modes.MODES[s['mode']].title == title)
    xs, ys, es = zip(*pts)
    ax.errorbar(xs, ys, yerr=es, marker='o', capsize=3, label=f'{title} {group}={g:g}')
  others = [s for s in summary if not gridded(s) and _finite(s[metric][0])]
  for i, s in enumerate(others):
    ax.axhline(s[metric][0], color=f'C{(i + 5) % 10}', linestyle=(0, (2, 2)), linewidth=1.2, label=label(s))
  what = stats.LABELS[metric] + (' (ratio of means, ± bootstrap std)' if metric == 'cd_score' else ' (± std)')
  ax.set_xlabel(x)
  ax.set_ylabel(what)
  ax.set_title(f"{_name(metric)} against {x}, one line per {group}", fontsize=10)
  if hv or others:
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  else:
    _unavailable(ax, _name(metric))
  return _png(fig, random_weights)


def plot_tradeoff(summary: Sequence[Dict], random_weights: bool) -> bytes:
  """Consistency against diversity: the study's settings and the paper's two reference points."""
  plt = optional.pyplot()
  y = 'e_flow' if any(_finite(s['e_flow'][0]) for s in summary) else 'psnr'
  fig, ax = plt.subplots(figsize=(7.2, 5.2))
  pts = [s for s in summary if _finite(s['cd_score'][0]) and _finite(s[y][0])]
  curves: Dict[str, List[Dict]] = {}   # HarmonyView: one curve per s1 along s2; CFG: one along its scale
  for s in pts:
    key = label(s, scales=-1)   # a curve along a mode's last scale: 'HarmonyView s1=2' (along s2), 'CFG', ...
    curves.setdefault(key, []).append(s)
  for i, (key, ss) in enumerate(curves.items()):
    ax.plot([s['cd_score'][0] for s in ss], [s[y][0] for s in ss], marker='o', color=f'C{i % 10}', label=key)
    for s in ss:
      ax.annotate(label(s), (s['cd_score'][0], s[y][0]), textcoords='offset points', xytext=(5, 4), fontsize=7)
  for name, marker in (('SyncDreamer', 's'), ('HarmonyView', '*')):
    p = stats.PAPER[name]
    ax.scatter([p['cd_score']], [p[y]], marker=marker, s=140, color='black', zorder=5, label=f'paper {name}')
    ax.annotate(f'paper {name}', (p['cd_score'], p[y]), textcoords='offset points', xytext=(6, -12), fontsize=8)
  if not pts:
    _unavailable(ax, f'CD score with {_name(y)} (this study)')
  ax.set_xlabel('CD score ↑ (diversity)')
  if y == 'e_flow':
    ax.set_ylabel('E_flow ↓ (consistency; axis inverted: up = more consistent)')
    ax.invert_yaxis()
  else:
    ax.set_ylabel('PSNR ↑ (consistency with GT; E_flow unavailable)')
  ax.margins(x=0.15, y=0.1)   # room for the labels of the outermost points
  ax.set_title('consistency–diversity trade-off', fontsize=10)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  return _png(fig, random_weights)


def plots(summary: Sequence[Dict], random_weights: bool) -> Dict[str, bytes]:
  return {'cd_vs_s2.png': plot_against(summary, 'cd_score', 's2', 's1', random_weights),
          'psnr_vs_s1.png': plot_against(summary, 'psnr', 's1', 's2', random_weights),
          'eflow_vs_s1.png': plot_against(summary, 'e_flow', 's1', 's2', random_weights),
          'tradeoff.png': plot_tradeoff(summary, random_weights)}


# ----------------------------------------------------------------------------- HTML

def data_uri(png: bytes) -> str:
  return 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')


def png_thumbnail(path: pathlib.Path, max_width: int) -> Optional[bytes]:
  """The image as PNG bytes, downscaled to at most max_width pixels wide; None if it cannot be read."""
  try:
    with Image.open(path) as im:
      im.load()
      if im.width <= max_width and im.format == 'PNG':
        return path.read_bytes()
      if im.mode not in ('RGB', 'RGBA', 'L', 'LA'):
        im = im.convert('RGBA')
      if im.width > max_width:
        im = im.resize((max_width, max(1, round(im.height * max_width / im.width))), Image.LANCZOS)
      buf = io.BytesIO()
      im.save(buf, format='PNG')
      return buf.getvalue()
  except (OSError, ValueError):
    return None


CSS = """
body { font-family: sans-serif; margin: 0 1.5rem 2rem; color: #222; }
.banner { position: sticky; top: 0; z-index: 1; background: #c00000; color: #fff; font-weight: bold;
          font-size: 1.4em; text-align: center; padding: .4em; margin: 0 -1.5rem; }
table.results { border-collapse: collapse; font-size: .9em; }
table.results th, table.results td { border: 1px solid #bbb; padding: .25em .6em; text-align: right; }
table.results td:first-child, table.results th:first-child { text-align: left; font-family: monospace; }
ul.notes { font-size: .85em; color: #444; max-width: 80em; }
.plots img { width: 48%; min-width: 420px; border: 1px solid #ddd; margin: .3em; }
section.input { border-top: 2px solid #888; margin-top: 1.5em; }
.inputview img { max-width: 256px; border: 1px solid #ccc; background: #eee; }
table.grid { width: 100%; border-collapse: collapse; }
table.grid th { width: 11em; text-align: left; vertical-align: top; padding: .4em .6em .4em 0; font-size: .9em; }
table.grid td { padding: .2em 0; border-bottom: 1px solid #ddd; }
figure.strip { margin: .2em 0 .5em; }
figure.strip img { width: 100%; display: block; }
figure.strip figcaption, .caption, .missing { font-size: .78em; color: #444; }
.missing { color: #a00; }
"""


def unit_caption(r: Dict) -> str:
  parts = [f"{r['setting']} · instance {r['instance']}", f"seed {r['seed']}"]
  parts += [f"{_name(m)} {num(r[m], DIGITS[m])}" for m in UNIT_METRICS]
  parts += [f"D {num(r['cd_D'], 4)}", f"S_var {num(r['cd_S_var'], 4)}"]
  return ' · '.join(parts)


def index_html(root: pathlib.Path, study: Dict, rows: Sequence[Dict], summary: Sequence[Dict],
               plot_png: Dict[str, bytes], strip_width: int) -> Tuple[str, int]:
  """The page and the number of strips embedded."""
  e = html.escape
  random_weights = bool(study.get('random_weights'))
  inputs = sorted({r['input'] for r in rows})
  title = f'Diversity study {root.name}'
  out = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">', f'<title>{e(title)}</title>',
         f'<style>{CSS}</style></head><body>']
  if random_weights:
    out.append(f'<div class="banner">{e(RANDOM_BANNER)}</div>')
  out.append(f'<h1>{e(title)}</h1>')
  out.append(f'<p>{len(rows)} units, {len(inputs)} inputs, {len(summary)} settings.</p>')
  # the table
  out.append('<h2>Results by setting</h2><table class="results"><tr>' + ''.join(f'<th>{e(h)}</th>' for h in HEADER)
             + '</tr>')
  for c in table_cells(summary):
    out.append('<tr>' + ''.join(f'<td>{e(x)}</td>' for x in c) + '</tr>')
  out.append('</table><ul class="notes">' + ''.join(f'<li>{e(n)}</li>' for n in footnotes(summary)) + '</ul>')
  # the plots
  out.append('<h2>Plots</h2><div class="plots">')
  for name in PLOTS:
    out.append(f'<img src="{data_uri(plot_png[name])}" alt="{e(name)}" title="{e(name)}">')
  out.append('</div>')
  # per input: input view, then a row per setting with its instances' strips
  meta = study.get('inputs') if isinstance(study.get('inputs'), dict) else {}
  order = {s['setting']: i for i, s in enumerate(summary)}
  out.append('<h2>Generated views by input</h2><p>' +
             ' · '.join(f'<a href="#input-{e(n)}">{e(n)}</a>' for n in inputs) + '</p>')
  strips = 0
  for name in inputs:
    out.append(f'<section class="input" id="input-{e(name)}"><h3>{e(name)}</h3><div class="inputview">')
    rel = meta[name].get('input_image') if isinstance(meta.get(name), dict) else None
    rel = rel if isinstance(rel, str) and rel else None
    png = png_thumbnail(root / rel, INPUT_WIDTH) if rel else None
    if png:
      out.append(f'<img src="{data_uri(png)}" alt="input view of {e(name)}"><div class="caption">input view</div>')
    else:
      out.append(f'<p class="missing">{"input view unreadable: " + e(rel) if rel else "no input view"}</p>')
    out.append('</div><table class="grid">')
    gt_rel = meta[name].get('gt_strip') if isinstance(meta.get(name), dict) else None
    gt_png = png_thumbnail(root / gt_rel, strip_width) if isinstance(gt_rel, str) and gt_rel else None
    if gt_png:   # the 16 ground-truth views at the metric size, above the generated strips
      out.append(f'<tr><th>ground truth</th><td><figure class="strip"><img src="{data_uri(gt_png)}" '
                 f'alt="ground-truth views of {e(name)}"><figcaption>ground-truth views</figcaption></figure></td></tr>')
    mine = sorted((r for r in rows if r['input'] == name), key=lambda r: (order[r['setting']], r['instance']))
    settings = sorted({r['setting'] for r in mine}, key=order.get)
    for setting in settings:
      s = summary[order[setting]]
      out.append(f'<tr><th>{e(label(s))}<br><code>{e(setting)}</code></th><td>')
      for r in (r for r in mine if r['setting'] == setting):
        png = png_thumbnail(root / r['strip'], strip_width) if r['strip'] else None
        if png:
          strips += 1
          out.append(f'<figure class="strip"><img src="{data_uri(png)}" alt="{e(setting)} instance {r["instance"]}">'
                     f'<figcaption>{e(unit_caption(r))}</figcaption></figure>')
        else:
          out.append(f'<p class="missing">strip missing: {e(str(r["strip"]))} — {e(unit_caption(r))}</p>')
      out.append('</td></tr>')
    out.append('</table></section>')
  config = json.dumps(study, indent=1, default=str, sort_keys=True)
  out.append(f'<h2>Study configuration</h2><details><summary>study.json</summary><pre>{e(config)}</pre></details>')
  out.append('</body></html>')
  return '\n'.join(out) + '\n', strips


# ----------------------------------------------------------------------------- CLI

def read_study(root: pathlib.Path) -> Tuple[Dict, List[Dict]]:
  if not root.is_dir():
    raise UserError(f'{root} is not a folder')
  path = root / 'study.json'
  study = {}
  if path.is_file():
    try:
      study = json.loads(path.read_text())
    except (OSError, ValueError) as err:
      raise UserError(f'{path}: not readable as JSON ({err})') from err
    if not isinstance(study, dict):
      raise UserError(f'{path}: expected a JSON object, found {type(study).__name__}')
  rows = store.read_rows(root)
  if not rows:
    raise UserError(f'{root}: no finished units (is it a study folder? expected index/p*.sqlite with rows)')
  return study, rows


def build(root: pathlib.Path, strip_width: int) -> Tuple[Dict[str, bytes], Dict]:
  """Every output file's bytes, computed before anything is written; and facts for the summary line."""
  study, rows = read_study(root)
  random_weights = bool(study.get('random_weights'))
  summary = summarize(rows)
  files = plots(summary, random_weights)
  files['table.md'] = table_md(summary, root.name, random_weights).encode()
  files['table.csv'] = table_csv(summary, random_weights).encode()
  page, strips = index_html(root, study, rows, summary, files, strip_width)
  files['index.html'] = page.encode()
  facts = {'units': len(rows), 'inputs': len({r['input'] for r in rows}), 'settings': len(summary),
           'strips': strips, 'random_weights': random_weights}
  return files, facts


@dataclasses.dataclass(frozen=True)
class ReportSettings:
  """Every setting of `python -m experiments.report`."""
  results: str = ''           # the study folder (study.json, index/, strips/)
  out: str = ''               # report folder (default: RESULTS/report)
  strip_width: int = 2048     # strips wider than this are downscaled in the page (16 at least)

  def validate(self) -> None:
    if not self.results:
      raise UserError('no study folder: set --config.results=DIR (the output_dir of python -m experiments.diversity)')
    checks.number(self, 'strip_width', integer=True)


def report(s: ReportSettings) -> int:
  s.validate()
  root = pathlib.Path(s.results)
  out = pathlib.Path(s.out) if s.out else root / 'report'
  try:
    files, facts = build(root, max(16, int(s.strip_width)))
    for name, data in files.items():
      atomic.write_bytes(out / name, data)
  except OSError as err:
    raise UserError(f'cannot write the report to {out}: {err}') from None
  mib = len(files['index.html']) / 2**20
  print(f"report of {root}: {facts['units']} units, {facts['inputs']} inputs, {facts['settings']} settings"
        + (f' — {RANDOM_BANNER}' if facts['random_weights'] else ''))
  print(f'  {out / "index.html"} ({mib:.1f} MiB, {facts["strips"]} strips embedded)')
  print(f'  {out / "table.md"}, table.csv')
  print(f'  {out}/' + ', '.join(PLOTS))
  return 0


def main(argv=None) -> int:
  return cli.main(argv, ReportSettings, report, prog='python -m experiments.report', doc=__doc__,
                  default=lambda: settings_lib.config_dict(ReportSettings))


if __name__ == '__main__':
  sys.exit(main())
