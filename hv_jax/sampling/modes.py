"""The guidance modes in one table: each mode's branches, scales, combination and names.

The sampler (branch multipliers, combination), the sampling job (which config fields hold the scales), the
studies (their grid and result columns), the results store (folder-safe setting names) and the report
(labels, order) all read `MODES`; none of them branches on a mode's name.

A branch scales each condition of the UNet (projected CLIP context, input-latent concat, frustum volumes)
by a constant, so all branches share one set of inputs (`guidance.branch_eps` evaluates them in one vmap):

| mode          | branches (context, concat, volume)            | combination                                                |
|---------------|-----------------------------------------------|------------------------------------------------------------|
| `none`        | cond (1, 1, 1)                                | eps_c                                                      |
| `cfg`         | cond (1, 1, 1), uncond (0, 0, 0)              | eps_u + s (eps_c - eps_u)                         (Eq. 5)  |
| `harmonyview` | cond (1, 1, 1), uc1 (0, 0, 1), uc2 (1, 4, 0)  | eps_c + s1 (eps_c - eps_uc1) + s2 (eps_c - eps_uc2) (Eq. 9)|

The original (`UNetWrapper` in `ldm/models/diffusion/sync_dreamer.py`) evaluates the branches as one batch
and zeroes conditions per branch. uc1 = eps(x; x_t^{1:N}) keeps only the volume; uc2 = eps(x; r) drops the
volume. Quirk kept on purpose: the original feeds uc2 the input latent multiplied by 4 (`x_concat*4`,
predict_with_decomposed_unconditional_scales) before the first 4 channels are divided by 0.18215; the table
writes that multiplier as `UC2_CONCAT`, which `SamplerConfig.uc2_concat_scale` (default 4.0, the original)
sets.

No JAX here (the report reads this table): a combination is plain arithmetic on the branch epsilons.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Sequence, Tuple, Union

UC2_CONCAT = 'uc2_concat_scale'   # a concat multiplier set by SamplerConfig.uc2_concat_scale (the original's 4)
Multiplier = Union[float, str]


def _none(eps, scales):
  """eps_c (the scale is unused)."""
  del scales
  return eps[0]


def _cfg(eps, scales):
  """Eq. 5, classifier-free guidance: eps_u + s (eps_c - eps_u)."""
  return eps[1] + scales[0] * (eps[0] - eps[1])


def _harmonyview(eps, scales):
  """Eq. 9, HarmonyView's decomposed guidance: eps_c + s1 (eps_c - eps_uc1) + s2 (eps_c - eps_uc2)."""
  return eps[0] + scales[0] * (eps[0] - eps[1]) + scales[1] * (eps[0] - eps[2])


@dataclasses.dataclass(frozen=True)
class GuidanceMode:
  """One guidance mode. Its scales are `num_scales` numbers per instance, in the order of `config_fields`."""
  name: str                      # SamplerConfig.guidance / --config.guidance, the study's `mode` column
  title: str                     # for people: report labels and legends
  equation: str                  # the paper's equation ('' for none)
  branches: Tuple[Tuple[str, Tuple[Multiplier, Multiplier, Multiplier]], ...]   # (name, (context, concat, volume))
  combine: Callable              # (eps [num_branches, ...], scales [num_scales, ...]) -> guided eps
  config_fields: Tuple[str, ...]   # the sampling config's fields holding the scales
  columns: Tuple[str, ...]       # the study's columns (and sweep fields) holding the scales
  tags: Tuple[str, ...]          # the scales' names in setting names and labels ('cfg_s=3', 'CFG s=3')

  @property
  def num_scales(self) -> int:
    """Scales per instance: one per scale; 'none' carries one unused 0 so every batch's scales are [B, k >= 1]."""
    return max(1, len(self.config_fields))

  def scales(self, values: Sequence[float]) -> Tuple[float, ...]:
    """The scales of one setting from its values ((0.0,) for a mode without scales)."""
    return tuple(float(v) for v in values) or (0.0,)

  def scales_of(self, settings) -> Tuple[float, ...]:
    """The scales sampling settings (`SampleSettings`) set for this mode (s1, s2 / cfg_scale)."""
    return self.scales([getattr(settings, f) for f in self.config_fields])

  def multipliers(self, uc2_concat_scale: float = 4.0) -> List[List[float]]:
    """[num_branches, 3] multipliers of (context, concat, volume), UC2_CONCAT given its value."""
    return [[uc2_concat_scale if m == UC2_CONCAT else m for m in mult] for _, mult in self.branches]

  @property
  def uses_uc2_concat_scale(self) -> bool:
    return any(UC2_CONCAT in mult for _, mult in self.branches)

  def setting_name(self, scales: Sequence[float]) -> str:
    """A folder-safe tag of one setting: 'harmonyview_s1=2_s2=1', 'cfg_s=3', 'none'."""
    return self.name + ''.join(f'_{t}={float(v):g}' for t, v in zip(self.tags, scales))

  def label(self, scales: Sequence[float]) -> str:
    """A setting for people: 'HarmonyView s1=2 s2=1', 'CFG s=3', 'no guidance'; fewer scales name a family
    ('HarmonyView s1=2': every s2)."""
    return ' '.join([self.title] + [f'{t}={float(v):g}' for t, v in zip(self.tags, scales)])


MODES: Dict[str, GuidanceMode] = {m.name: m for m in (       # in the order of tables and batches
    GuidanceMode('none', 'no guidance', '', (('cond', (1., 1., 1.)),), _none,
                 config_fields=(), columns=(), tags=()),
    GuidanceMode('cfg', 'CFG', 'Eq. 5', (('cond', (1., 1., 1.)), ('uncond', (0., 0., 0.))), _cfg,
                 config_fields=('cfg_scale',), columns=('cfg',), tags=('s',)),
    GuidanceMode('harmonyview', 'HarmonyView', 'Eq. 9',
                 (('cond', (1., 1., 1.)), ('uc1', (0., 0., 1.)), ('uc2', (1., UC2_CONCAT, 0.))), _harmonyview,
                 config_fields=('s1', 's2'), columns=('s1', 's2'), tags=('s1', 's2')),
)}


def mode(name: str) -> GuidanceMode:
  """The mode called `name`; ValueError (one line naming the choices) for any other name."""
  if name not in MODES:
    choices = [f"'{m.name}'" + (f' ({m.equation})' if m.equation else '') for m in reversed(MODES.values())]
    raise ValueError(f'unknown guidance mode {name!r}: use {", ".join(choices[:-1])} or {choices[-1]}')
  return MODES[name]
