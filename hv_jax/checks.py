"""Checks of numeric settings (each settings dataclass's `validate()`): finite, in range, integral where counts
are meant.

A NaN or infinite setting is never passed on (`eta=nan` would give black views and an invalid manifest);
each failure is one UserError line naming the config field as the user spells it (`--config.<field>`).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

from hv_jax.errors import UserError


def _get(settings, field: str):
  """A (dotted) field of a settings dataclass (or of a dict)."""
  value = settings
  for part in field.split('.'):
    value = value[part] if isinstance(value, dict) else getattr(value, part)
  return value


def _bounds(lo, hi, lo_open: bool) -> str:
  if lo is not None and hi is not None:
    return f'in {"(" if lo_open else "["}{lo!r}, {hi!r}]'
  if lo is not None:
    return f'{">" if lo_open else ">="} {lo!r}'
  return f'<= {hi!r}'


def check_number(name: str, value, *, lo: Optional[float] = None, hi: Optional[float] = None,
                 lo_open: bool = False, integer: bool = False, hint: str = ''):
  """`value` as float (or int), or UserError('<name>=<value>: must be ...')."""
  hint = f' ({hint})' if hint else ''
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise UserError(f'{name}={value!r}: must be {"an integer" if integer else "a number"}{hint}')
  if integer:
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
      raise UserError(f'{name}={value!r}: must be an integer{hint}')
    value = int(value)
  else:
    value = float(value)
    if not math.isfinite(value):
      raise UserError(f'{name}={value}: must be a finite number{hint}')
  if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
    raise UserError(f'{name}={value!r}: must be {_bounds(lo, hi, lo_open)}{hint}')
  return value


def number(settings, field: str, **kw):
  """check_number of the settings field `field` (dotted for nested fields), named --config.<field>."""
  return check_number(f'--config.{field}', _get(settings, field), **kw)


def numbers_of(settings, field: str, **kw) -> Sequence:
  """Every element of a sequence field (a sweep's scales), each checked as `number` does."""
  values = _get(settings, field)
  if isinstance(values, (str, bytes)) or not hasattr(values, '__iter__'):
    values = (values,)
  return tuple(check_number(f'--config.{field}', v, **kw) for v in values)


def differing_keys(old, new, prefix: str = '') -> list:
  """Dotted names of the entries where two JSON-like settings trees differ (sorted; '' prefix at the root)."""
  if isinstance(old, dict) and isinstance(new, dict):
    return [d for k in sorted(set(old) | set(new), key=str)
            for d in differing_keys(old.get(k), new.get(k), f'{prefix}{k}.')]
  return [] if old == new else [prefix[:-1] or 'identity']


def settings_difference(old: dict, new: dict) -> str:
  """'' when two settings dicts are equal, else '<keys that differ>; e.g. <key>: <old> there, <new> now'."""
  diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
  if not diff:
    return ''
  nested = lambda v: isinstance(v, (dict, list))
  k = next((k for k in diff if not (nested(old.get(k)) or nested(new.get(k)))), diff[0])   # a readable example
  show = lambda v: 'another value' if nested(v) else repr(v)
  return f'{", ".join(diff)}; e.g. {k}: {show(old.get(k))} there, {show(new.get(k))} now'
