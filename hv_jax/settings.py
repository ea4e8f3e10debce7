"""Frozen settings dataclasses from plain dicts (JSON, `ConfigDict.to_dict()`), strictly, and back.

`from_dict(cls, d)` is the one reader of the project's settings dataclasses (`ModelConfig`, `CLIPModelConfig`,
`NeuSConfig`, and each command's settings: `SampleSettings`, `ReconstructSettings`, ...): a key that names no
field is an error that says which key, where, and the closest field name, so a typo in a config file is
reported instead of silently giving the default. `config_dict(cls)` is the other direction: the ConfigDict of
a dataclass's defaults, which config files (configs/*.py) start from, so the dataclasses are the one place
where a setting's default and its meaning are written.

  from_dict(ModelConfig, {'unet': {'model_chanels': 32}})
  -> SettingsError: ModelConfig: unknown key 'unet.model_chanels' (UNetConfig has no such field); did you
     mean 'unet.model_channels'?
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import json
import re
import typing
from typing import Any, Mapping, Type, TypeVar, Union

import ml_collections

T = TypeVar('T')


class SettingsError(ValueError):
  """A settings dict that does not fit its dataclass (unknown key, wrong nesting); one line."""


@functools.lru_cache(None)
def _field_types(cls) -> dict:
  """Field name -> resolved type (annotations are strings under `from __future__ import annotations`)."""
  hints = typing.get_type_hints(cls)
  return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _unwrap_optional(tp):
  if typing.get_origin(tp) is typing.Union:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1:
      return args[0]
  return tp


def _convert(tp, value, path: str, root: str):
  tp = _unwrap_optional(tp)
  if dataclasses.is_dataclass(tp) and isinstance(tp, type):
    if isinstance(value, tp):
      return value
    if 'from_dict' in vars(tp):      # a block that reads itself (NeuSConfig: the sdf field's kind)
      return tp.from_dict(value, path=path, root=root)
    return from_dict(tp, value, path=path, root=root)
  if (tp is tuple or typing.get_origin(tp) is tuple) and isinstance(value, (list, tuple)):
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_convert(args[0], v, f'{path}[{i}]', root) for i, v in enumerate(value))
    if args and len(args) == len(value):
      return tuple(_convert(a, v, f'{path}[{i}]', root) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    return tuple(value)
  return value


def unknown_key_message(key: str, path: str, cls, names, root: str = '') -> str:
  """"Root: unknown key 'a.b' (Class has no such field); did you mean 'a.c'?" (a suggestion when one is close,
  else the field names)."""
  full = f'{path}.{key}' if path else str(key)
  close = difflib.get_close_matches(str(key), sorted(names), n=1, cutoff=0.6)
  hint = (f"did you mean '{path + '.' if path else ''}{close[0]}'?" if close
          else f"{cls.__name__}'s fields are {', '.join(sorted(names))}")
  owner = f' ({cls.__name__} has no such field)' if path else ''
  return f"{root or cls.__name__}: unknown key '{full}'{owner}; {hint}"


def from_dict(cls: Type[T], d: Mapping[str, Any], *, path: str = '', root: str = '') -> T:
  """`cls(**d)` for a frozen dataclass, recursively: nested dataclass fields are built from nested dicts,
  tuple fields from lists (JSON has no tuples). Missing keys take the field defaults.

  Raises SettingsError on a key that is not a field of `cls` (naming its dotted path, with a did-you-mean),
  or when `d` (or a nested block) is not a mapping. `path` / `root`: where `d` sits in a bigger settings dict
  and that dict's class name, for the messages (a caller that builds one block itself).
  """
  root = root or cls.__name__
  if not isinstance(d, Mapping):
    where = f"{root}: '{path}'" if path else root
    raise SettingsError(f'{where}: expected a dict of {cls.__name__} fields, got {type(d).__name__} {d!r}')
  types = _field_types(cls)
  kw = {}
  for key, value in d.items():
    if key not in types:
      raise SettingsError(unknown_key_message(key, path, cls, types, root))
    kw[key] = _convert(types[key], value, f'{path}.{key}' if path else str(key), root)
  return cls(**kw)


def _config_value(value, tp):
  """A field's value as a ConfigDict entry: nested dataclasses as ConfigDicts, None as a typed placeholder
  (so `--config.x=...` can set it), anything else as it is."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return config_dict(value)
  if value is None:
    inner = _unwrap_optional(tp)
    return ml_collections.config_dict.placeholder(inner if isinstance(inner, type) else object)
  return value


def config_dict(settings: Union[type, Any]) -> ml_collections.ConfigDict:
  """The ConfigDict of a settings dataclass: its defaults (a class) or an instance's values.

  Nested dataclass fields become nested ConfigDicts, tuples stay tuples, an Optional field that is None a
  placeholder of its type. `from_dict(cls, config_dict(cls).to_dict()) == cls()`. Config files start from
  it (`c = config_dict(SampleSettings)`, then set what differs) and commands without a config file use it as
  their default config.
  """
  instance = settings() if isinstance(settings, type) else settings
  if 'to_dict' in vars(type(instance)):      # a block that writes itself (NeuSConfig: the sdf field's kind)
    return ml_collections.ConfigDict(instance.to_dict())
  types = _field_types(type(instance))
  c = ml_collections.ConfigDict()
  for f in dataclasses.fields(instance):
    if f.init:
      c[f.name] = _config_value(getattr(instance, f.name), types[f.name])
  return c


def field_docs(cls: type, prefix: str = '') -> dict:
  """{dotted field name: its comment in the class body} (`name: type = default  # what it means`), nested
  dataclass fields included: the field docs that `--help` prints."""
  docs = {}
  for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):   # inherited fields too
    try:
      source = inspect.getsource(klass)
    except (OSError, TypeError):
      continue
    for m in re.finditer(r'^\s+(\w+):[^#\n]*#\s*(.+)$', source, re.M):
      docs[prefix + m.group(1)] = m.group(2).strip()
  for f in dataclasses.fields(cls):
    tp = _unwrap_optional(_field_types(cls).get(f.name)) if f.init else None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
      docs.update(field_docs(tp, f'{prefix}{f.name}.'))
  return docs


def as_json(instance) -> dict:
  """A settings dataclass as plain JSON values: nested blocks as dicts (a block's own `to_dict` where it has
  one: NeuSConfig's sdf kind), tuples as lists. What manifests and identities record."""
  return json.loads(json.dumps(config_dict(instance).to_dict(), allow_nan=True))
