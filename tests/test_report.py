"""`python -m experiments.report`: table values by hand, plots, a self-contained page, the error path, and the
page as a person sees it (headless Chromium: every image loads, the screenshot is not blank)."""
from __future__ import annotations

import base64
import csv
import html.parser
import io
import json
import math
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from PIL import Image

from experiments import report, store

CHROMIUM = '/usr/bin/chromium'
INPUTS = ('alpha', 'beta', 'gamma')            # gamma: no ground truth, no input view
SETTINGS = (('harmonyview', (2., 1.)), ('cfg', (3.,)), ('harmonyview', (1., 1.)), ('none', ()),
            ('harmonyview', (2., .5)), ('cfg', (2.,)))
ORDER = ['none', 'cfg_s=2', 'cfg_s=3', 'harmonyview_s1=1_s2=1', 'harmonyview_s1=2_s2=0.5', 'harmonyview_s1=2_s2=1']
INSTANCES = 2
H = 32


def _strip(rng):
  """16 views of H x H: a flat saturated colour each, with a little noise (many distinct colours)."""
  colours = rng.integers(0, 256, (16, 1, 1, 3))
  views = np.clip(colours + rng.normal(0, 6, (16, H, H, 3)), 0, 255).astype(np.uint8)
  return np.concatenate(list(views), 1)


def _rows(root):
  """Writes the study through the store (two shards, as two processes would) and returns its rows."""
  rng = np.random.default_rng(1)
  rows = []
  for (mode, scales) in SETTINGS:
    setting = store.setting_name(mode, scales)
    for i, name in enumerate(INPUTS):
      for k in range(INSTANCES):
        gt = name != 'gamma'
        rows.append({
            'input': name, 'instance': k, 'setting': setting, 'input_id': i, 'mode': mode,
            's1': scales[0] if mode == 'harmonyview' else math.nan,
            's2': scales[1] if mode == 'harmonyview' else math.nan,
            'cfg': scales[0] if mode == 'cfg' else math.nan, 'seed': 100 * i + k,
            'strip': store.strip_relpath(name, setting, k),
            'cd_D': rng.uniform(2, 6), 'cd_S_var': rng.uniform(1, 9),
            'psnr': rng.uniform(15, 25) if gt else math.nan, 'ssim': rng.uniform(.7, .9) if gt else math.nan,
            'lpips': rng.uniform(.1, .2) if gt else math.nan,
            'e_flow': math.nan if setting == 'cfg_s=3' else rng.uniform(1.5, 2.5),
            'seconds': 1., 'process': k % 2, 'finished': 1e9 + len(rows)})
  shards = [store.Store(root, p) for p in (0, 1)]
  for r in rows:
    shards[r['process']].write_strip(r['input'], r['setting'], r['instance'], _strip(rng))
    shards[r['process']].put([r])
  for s in shards:
    s.close()
  return rows


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  root = tmp_path_factory.mktemp('study')
  rows = _rows(root)
  rng = np.random.default_rng(2)
  inputs = {}
  for name in INPUTS:
    rel = None
    if name != 'gamma':
      rel = f'inputs/{name}.png'
      (root / 'inputs').mkdir(exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)).save(root / rel)
    gt = None
    if name == INPUTS[0]:   # one input with ground-truth views (the runner writes inputs/<name>_gt.png)
      gt = f'inputs/{name}_gt.png'
      Image.fromarray(rng.integers(0, 256, (32, 512, 4), dtype=np.uint8)).save(root / gt)
    inputs[name] = {'input_image': rel, 'gt_strip': gt}
  (root / 'study.json').write_text(json.dumps({'random_weights': True, 'inputs': inputs, 'steps': 50}))
  out = root / 'report'
  assert report.main([f'--config.results={root}']) == 0
  return root, out, rows


def _csv(out):
  with open(out / 'table.csv', newline='') as f:
    return list(csv.DictReader(f))


def test_table_values_by_hand(study):
  _, out, rows = study
  table = _csv(out)
  assert [t['setting'] for t in table] == ORDER
  for t in table:
    rs = [r for r in rows if r['setting'] == t['setting']]
    assert int(t['units']) == len(rs) == len(INPUTS) * INSTANCES
    assert int(t['inputs']) == len(INPUTS)
    for m in ('psnr', 'ssim', 'lpips', 'e_flow'):
      v = np.array([r[m] for r in rs if not math.isnan(r[m])])
      if not len(v):
        assert t[f'{m}_mean'] == t[f'{m}_std'] == 'n/a' and t[f'{m}_n'] == '0'
        continue
      assert float(t[f'{m}_mean']) == pytest.approx(v.sum() / len(v), rel=1e-12)
      assert float(t[f'{m}_std']) == pytest.approx(math.sqrt(((v - v.mean()) ** 2).sum() / len(v)), rel=1e-9)
      assert int(t[f'{m}_n']) == len(v)
    # the CD score is a ratio of means (here it differs from the mean of per-unit ratios)
    d, s = np.array([r['cd_D'] for r in rs]), np.array([r['cd_S_var'] for r in rs])
    assert float(t['cd_score']) == pytest.approx(d.mean() / s.mean(), rel=1e-12)
    assert abs(float(t['cd_score']) - np.mean(d / s)) > 1e-3
    # ± : bootstrap over inputs, as the footnote says: 1000 draws of the inputs with replacement, default_rng(0)
    draws = np.random.default_rng(0).integers(0, len(INPUTS), size=(1000, len(INPUTS)))
    ratios = []
    for draw in draws:
      units = [r for i in draw for r in rs if r['input'] == INPUTS[i]]
      ratios.append(np.mean([r['cd_D'] for r in units]) / np.mean([r['cd_S_var'] for r in units]))
    assert float(t['cd_score_std']) == pytest.approx(np.std(ratios), rel=1e-9)
    assert t['WARNING'] == report.RANDOM_BANNER
  md = (out / 'table.md').read_text()
  assert report.RANDOM_BANNER in md and '1000 bootstrap resamples' in md and 'ratio of means' in md
  cfg3 = next(line for line in md.splitlines() if line.startswith('| `cfg_s=3`'))
  assert cfg3.split(' | ')[6] == 'n/a'                 # E_flow unavailable for that setting
  hv = next(line for line in md.splitlines() if line.startswith('| `harmonyview_s1=2_s2=1`'))
  assert '(n=4)' in hv.split(' | ')[3]                 # PSNR: gamma has no ground truth


def test_files_and_plots(study):
  _, out, _ = study
  assert sorted(os.listdir(out)) == sorted(('index.html', 'table.csv', 'table.md') + report.PLOTS)
  for name in report.PLOTS:
    with Image.open(out / name) as im:
      assert im.format == 'PNG' and im.width > 300 and im.height > 200
      assert len(im.convert('RGB').getcolors(1 << 20)) > 50   # something drawn, not an empty canvas


class _Images(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.srcs, self.alts, self.links = [], [], []

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    if tag == 'img':
      self.srcs.append(a['src'])
      self.alts.append(a.get('alt', ''))
    for k in ('src', 'href'):
      if k in a and tag != 'img':
        self.links.append(a[k])


def test_html_is_self_contained(study):
  _, out, rows = study
  page = (out / 'index.html').read_text()
  p = _Images()
  p.feed(page)
  inputs_with_view = len(INPUTS) - 1
  assert len(p.srcs) == len(rows) + len(report.PLOTS) + inputs_with_view + 1   # + one ground-truth strip
  assert sum(a.startswith('input view of') for a in p.alts) == inputs_with_view
  assert sum(a.startswith('ground-truth views of') for a in p.alts) == 1
  for src in p.srcs:
    assert src.startswith('data:image/png;base64,')
    with Image.open(io.BytesIO(base64.b64decode(src.split(',', 1)[1]))) as im:
      assert im.format == 'PNG'
      im.verify()
  assert all(link.startswith('#') for link in p.links)      # only in-page anchors, nothing external
  assert report.RANDOM_BANNER in page
  for r in rows:   # every unit is labelled with its setting and instance
    assert f"{r['setting']} · instance {r['instance']}" in page


def test_wide_strips_are_downscaled(tmp_path):
  wide = tmp_path / 'wide.png'
  Image.fromarray(np.zeros((256, 4096, 3), np.uint8)).save(wide)
  with Image.open(io.BytesIO(report.png_thumbnail(wide, 2048))) as im:
    assert im.format == 'PNG' and im.size == (2048, 128)
  assert report.png_thumbnail(tmp_path / 'absent.png', 2048) is None


def test_single_setting_without_metrics(tmp_path, capsys):
  """One setting, every metric unavailable, no study.json: still a full report, 'n/a' everywhere."""
  s = store.Store(tmp_path)
  s.write_strip('x', 'none', 0, np.zeros((H, 16 * H, 3), np.uint8))
  s.put([{'input': 'x', 'instance': 0, 'setting': 'none', 'mode': 'none', 'seed': 0,
          'strip': store.strip_relpath('x', 'none', 0), 'finished': 1.}])
  s.close()
  assert report.main([f'--config.results={tmp_path}', f'--config.out={tmp_path / "r"}']) == 0
  assert str(tmp_path / 'r' / 'index.html') in capsys.readouterr().out
  (row,) = _csv(tmp_path / 'r')
  assert row['psnr_mean'] == row['cd_score'] == 'n/a' and 'WARNING' not in row
  assert report.RANDOM_BANNER not in (tmp_path / 'r' / 'index.html').read_text()


def test_empty_or_missing_study(tmp_path, capsys):
  store.Store(tmp_path / 'empty').close()
  for root in (tmp_path / 'empty', tmp_path / 'absent'):
    assert report.main([f'--config.results={root}']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1
    assert not (root / 'report').exists()
  assert sorted(os.listdir(tmp_path)) == ['empty']


# ----------------------------------------------------------------------------- in a browser

def _chromium(*args, timeout=90):
  flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync']
  with tempfile.TemporaryDirectory() as profile:
    return subprocess.run(['nice', '-n', '19', CHROMIUM, *flags, f'--user-data-dir={profile}', *args],
                          capture_output=True, text=True, timeout=timeout, check=True).stdout


# (ignore the launcher's "[: ...: unexpected operator" and dbus lines on stderr: Debian's wrapper, no session bus)
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f'{CHROMIUM} absent (apt-get install -y chromium)')
def test_page_in_chromium(study, tmp_path):
  _, out, rows = study
  alone = tmp_path / 'copied'     # the page copied alone: nothing else to load from
  alone.mkdir()
  shutil.copy(out / 'index.html', alone / 'index.html')
  # every <img> decoded: a probe copy sets the title to "<loaded>/<total>" once the page has loaded
  probe = (alone / 'index.html').read_text().replace('</body>', (
      "<script>window.addEventListener('load', () => { const a = [...document.images]; document.title = "
      "'loaded ' + a.filter(i => i.complete && i.naturalWidth > 0).length + '/' + a.length; });</script></body>"))
  (alone / 'probe.html').write_text(probe)
  dom = _chromium('--virtual-time-budget=10000', '--dump-dom', (alone / 'probe.html').as_uri())
  total = len(rows) + len(report.PLOTS) + len(INPUTS) - 1 + 1   # + the ground-truth strip
  assert re.search(r'<title>loaded (\d+)/(\d+)</title>', dom).groups() == (str(total), str(total))
  # what a person sees: the red banner on top, the table, plots and strips, not a blank page
  shot = tmp_path / 'shot.png'
  _chromium(f'--screenshot={shot}', '--window-size=1400,3000', (alone / 'index.html').as_uri())
  img = np.asarray(Image.open(shot).convert('RGB')).astype(int)
  assert img.shape[:2] == (3000, 1400)
  top = img[5:25, 600:800].reshape(-1, 3).mean(0)
  assert top[0] > 150 and top[1] < 60 and top[2] < 60, f'no red banner at the top: {top}'
  colours = len(np.unique((img[..., 0] << 16) | (img[..., 1] << 8) | img[..., 2]))
  saturated = (img.max(-1) - img.min(-1) > 80).mean()
  assert colours > 2000, f'only {colours} distinct colours: blank page?'
  assert saturated > 0.05, f'only {saturated:.1%} saturated pixels: no strips visible?'
  # strips are full-width rows of 16 flat views: find rows in the lower part with many colour changes
  lower = img[1500:]
  strip_rows = ((np.abs(np.diff(lower, axis=1)).sum(-1) > 60).sum(1) >= 10).sum()
  assert strip_rows > 100, f'only {strip_rows} pixel rows look like strips'
