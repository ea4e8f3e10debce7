"""Summary statistics over objects and instances, as the original's statistics scripts report them.

`gso_nvs_statistics.py` / `gso_mesh_statistics.py`, for every metric: per object, the best, the average and
the (population) variance over its N instances; then the mean of each over objects. "Best" is the max for
PSNR, SSIM and IoU and the min for LPIPS, E_flow and Chamfer. The CD score is a ratio of means over every
(object, instance) (`cd_score.cd_score`).

One quirk is reproduced on request (`nvs_script_rows`): `eval_nvs.py` never clears its per-view lists
between instances, so the value it logs for instance k is the mean over the views of instances 0..k, and
the statistics script then takes max/mean/min/var over those running means. `instance_rows` gives the
per-instance values (each instance on its own), which is what the table reports by default.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

HIGHER_IS_BETTER = {'psnr': True, 'ssim': True, 'lpips': False, 'e_flow': False, 'chamfer': False, 'iou': True,
                    'cd_score': True}
LABELS = {'psnr': 'PSNR ↑', 'ssim': 'SSIM ↑', 'lpips': 'LPIPS ↓', 'e_flow': 'E_flow ↓', 'cd_score': 'CD score ↑',
          'chamfer': 'Chamfer ↓', 'iou': 'Volume IoU ↑'}
# Paper, Table 1/2 (all 30 GSO objects, generated views, 4 instances; ../gso-eval README).
PAPER = {
    'HarmonyView': {'psnr': 20.69, 'ssim': 0.825, 'lpips': 0.133, 'e_flow': 1.945, 'cd_score': 0.792,
                    'chamfer': 0.0187, 'iou': 0.6401},
    'SyncDreamer': {'psnr': 20.19, 'ssim': 0.819, 'lpips': 0.140, 'e_flow': 2.071, 'cd_score': 0.717,
                    'chamfer': 0.0261, 'iou': 0.5421},
}
PER_VIEW = ('psnr', 'ssim', 'lpips')   # metrics eval_nvs.py averages over the 16 views


def per_object(values: np.ndarray, metric: str) -> Dict[str, float]:
  """Best / average / population variance over one object's instances (np.var, as the scripts).

  PSNR of identical images is +inf and stays so (its variance is then reported as 0, not nan).
  """
  v = np.asarray(values, np.float64)
  best = v.max() if HIGHER_IS_BETTER[metric] else v.min()
  var = float(v.var()) if np.all(np.isfinite(v)) else 0.
  return {'best': float(best), 'mean': float(v.mean()), 'var': var}


def fmt(x: float, digits: int = 4) -> str:
  return '∞' if x == float('inf') else f'{x:.{digits}f}'



def summarize(per_instance: Dict[str, Dict[str, np.ndarray]]) -> Dict[str, Dict[str, float]]:
  """{object: {metric: [N] per-instance values}} -> {metric: {best, mean, var, objects}}, means over objects.

  Objects lacking a metric (e.g. no mesh) are left out of that metric's means; 'objects' counts the rest.
  """
  out: Dict[str, Dict[str, float]] = {}
  metrics = sorted({m for obj in per_instance.values() for m in obj}, key=list(HIGHER_IS_BETTER).index)
  for m in metrics:
    rows = [per_object(obj[m], m) for obj in per_instance.values() if m in obj]
    if rows:
      out[m] = {k: float(np.mean([r[k] for r in rows])) for k in ('best', 'mean', 'var')}
      out[m]['objects'] = len(rows)
  return out


def nvs_script_rows(per_view: np.ndarray) -> np.ndarray:
  """eval_nvs.py's logged value per instance: per_view [N, 16] -> [N] running means over instances 0..k."""
  per_view = np.asarray(per_view, np.float64)
  counts = np.arange(1, per_view.shape[0] + 1) * per_view.shape[1]
  return np.cumsum(per_view.sum(1)) / counts


def markdown_table(summary: Dict[str, Dict[str, float]], cd: Dict[str, float] | None = None,
                   script_nvs: Dict[str, Dict[str, float]] | None = None) -> str:
  """The results table: ours (mean over objects of per-object best / average / variance) next to the paper."""
  lines = ['| metric | objects | best (mean over objects) | average | variance | paper HarmonyView | paper SyncDreamer |',
           '|---|---|---|---|---|---|---|']
  for m, s in summary.items():
    if m == 'cd_score':
      continue
    lines.append(f"| {LABELS[m]} | {s['objects']} | {fmt(s['best'])} | {fmt(s['mean'])} | {fmt(s['var'], 6)} | "
                 f"{PAPER['HarmonyView'][m]} | {PAPER['SyncDreamer'][m]} |")
  if cd:
    lines.append(f"| {LABELS['cd_score']} (mean D / mean S_var) | {cd['objects']} | | {cd['script']:.4f} | | "
                 f"{PAPER['HarmonyView']['cd_score']} | {PAPER['SyncDreamer']['cd_score']} |")
    lines.append(f"| CD score, per-instance variant (mean of D/S_var) | {cd['objects']} | | "
                 f"{cd['per_instance']:.4f} | | | |")
  if script_nvs:
    lines.append('')
    lines.append("As `gso_nvs_statistics.py` prints it from `eval_nvs.py`'s log (running means over instances, "
                 "see hv_jax/metrics/stats.py):")
    lines.append('')
    lines.append('| metric | Max | Mean | Min | Var |')
    lines.append('|---|---|---|---|---|')
    for m, s in script_nvs.items():
      lines.append(f"| {LABELS[m]} | {fmt(s['max'])} | {fmt(s['mean'])} | {fmt(s['min'])} | {fmt(s['var'], 8)} |")
  return '\n'.join(lines) + '\n'


def script_nvs_summary(per_view: Dict[str, Dict[str, np.ndarray]]) -> Dict[str, Dict[str, float]]:
  """{object: {metric: [N, 16]}} -> gso_nvs_statistics' Max/Mean/Min/Var lines for PSNR, SSIM, LPIPS."""
  out = {}
  for m in PER_VIEW:
    rows = [nvs_script_rows(obj[m]) for obj in per_view.values() if m in obj]
    if rows:
      var = [r.var() if np.all(np.isfinite(r)) else 0. for r in rows]
      out[m] = {'max': float(np.mean([r.max() for r in rows])), 'mean': float(np.mean([r.mean() for r in rows])),
                'min': float(np.mean([r.min() for r in rows])), 'var': float(np.mean(var)),
                'objects': len(rows)}
  return out


def csv_rows(per_instance: Dict[str, Dict[str, np.ndarray]], metrics: Sequence[str]) -> List[List[str]]:
  rows = [['object', 'instance', *metrics]]
  for obj, vals in per_instance.items():
    n = max(len(v) for v in vals.values())
    for k in range(n):
      rows.append([obj, str(k)] + [f'{vals[m][k]:.6g}' if m in vals else '' for m in metrics])
  return rows
