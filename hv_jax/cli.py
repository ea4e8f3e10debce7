"""Every command reads its settings one way: a config (a Python file with get_config(), or the command's
default) whose fields are overridden as `--config.<field>=value`, turned into the command's frozen settings
dataclass once (`hv_jax.settings.from_dict`, strict), which is all the library is handed.

  python -m hv_jax.sample --config=configs/gso.py --config.s1=1.5        # a config file, fields overridden
  python -m hv_jax.evaluate_mesh --config.pred=mesh.ply --config.gt=model.obj --config.name=bell   # the default

Every mistake in the flags, the config file or the settings is one `error: ...` line and exit code 2, never a
traceback: ml_collections reports a misspelt field as an AttributeError deep inside absl's flag parsing (a
40-line traceback ending in 'Did you mean "sample_num"'), and a missing or broken config file only when the
config is first read; `main` parses the flags itself and turns both, and absl's own flag errors, into one
line. It parses with a FlagValues of its own (no global flags), so a command's `main(argv)` can be called any
number of times in one process (the tests do) and returns its exit code.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import os
import re
import sys
from typing import Callable, Optional, Sequence, Type, TypeVar

import ml_collections
from absl import flags
from ml_collections import config_flags

from hv_jax import settings as settings_lib
from hv_jax.errors import UserError

T = TypeVar('T')


def load_config(path: str) -> ml_collections.ConfigDict:
  """The ConfigDict of a config file (its `get_config()`), loaded by path: what `--config=PATH` loads. Config
  files use it to start from a sibling (experiments/configs/demo_sweep.py from configs/demo.py), so they load
  from any working folder and import nothing but hv_jax (and experiments)."""
  path = os.path.abspath(path)
  name = '_hv_config_' + hashlib.sha1(path.encode()).hexdigest()[:12]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise UserError(f'config file {path} is not a Python file')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def no_checkout(what: str) -> UserError:
  """The one line when `convert` cannot be imported: convert/ (PyTorch -> Flax) lives in the repository
  checkout and is not installed with hv_jax; the commands run from the checkout's root find it."""
  return UserError(f'{what} needs convert/ of the hv_jax repository checkout, which is not installed with the '
                   'package: run the command (python -m ...) in the root folder of a clone of the repository')


def one_line(text: str) -> str:
  return ' '.join(str(text).split())


def describe_flag_error(e: BaseException, argv: Sequence[str]) -> str:
  """One line for an exception raised while parsing the flags."""
  # ml_collections raises AttributeError(KeyError("'name'")) for an unknown field: unwrap to the name's text
  while isinstance(e, (KeyError, AttributeError)) and e.args and isinstance(e.args[0], (KeyError, AttributeError)):
    e = e.args[0]
  text = str(e.args[0]) if isinstance(e, (KeyError, AttributeError)) and e.args else str(e)
  if isinstance(e, SyntaxError) or any(s in text for s in (
      'Failed loading config file', 'Configuration is not available', 'Error whilst parsing config file')):
    return describe_config_error(e, argv)
  m = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  if m:
    good, bad = m.groups()
    flag = next((a.split('=')[0] for a in argv if re.fullmatch(rf'--config\.(.+\.)?{re.escape(bad)}(=.*)?', a)),
                f'--config.{bad}')
    return f'{flag}: the config has no field {bad!r}; did you mean {flag[:len(flag) - len(bad)]}{good}?'
  m = re.fullmatch(r"'?([^'\n]+)'?", text.strip())
  if isinstance(e, (KeyError, AttributeError)) and m:
    bad = m.group(1)
    flag = next((a.split('=')[0] for a in argv if re.fullmatch(rf'--config\.(.+\.)?{re.escape(bad)}(=.*)?', a)),
                f'--config.{bad}')
    return f'{flag}: the config has no field {bad!r}'
  return one_line(text.replace('Pass --helpshort or --helpfull to see help on flags.', ''))


def describe_config_error(e: BaseException, argv: Sequence[str]) -> str:
  """One line for a config file that could not be loaded (missing, syntax error, get_config() raising)."""
  path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  cause = e
  while cause.__cause__ is not None:
    cause = cause.__cause__
  if path and not os.path.isfile(path):
    return f'config file {path} not found (pass --config=configs/<name>.py)'
  if isinstance(cause, SyntaxError):
    return f'cannot load config file {path}: {type(cause).__name__}: {cause}'
  # ml_collections puts the config module's traceback into the message: its last line names the error
  last = [l.strip() for l in str(cause).splitlines() if l.strip()]
  return f'cannot load config file {path}: {last[-1] if last else type(cause).__name__}'


def usage(prog: str, doc: str, settings_cls: type, default: Optional[Callable] = None) -> str:
  """--help: the command's docstring, then every setting with its default and meaning (the dataclass's)."""
  lines = [doc.strip(), '', f'settings (--config.<field>=value{"" if default else "; --config=FILE first"}):']
  base = settings_lib.from_dict(settings_cls, default().to_dict()) if default else settings_cls()
  docs = settings_lib.field_docs(settings_cls)
  for key, value in _fields(base):
    note = docs.get(key, '')
    lines.append(f'  --config.{key}={value!r}' + (f'    # {note}' if note else ''))
  return '\n'.join(lines)


def _fields(value, prefix: str = ''):
  """(dotted name, value) of every leaf of a settings dataclass, in the order of the fields."""
  if dataclasses.is_dataclass(value) and 'to_dict' in vars(type(value)):
    value = value.to_dict()
  if isinstance(value, dict):
    items = value.items()
  elif dataclasses.is_dataclass(value):
    items = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value) if f.init)
  else:
    yield prefix[:-1], value
    return
  for k, v in items:
    yield from _fields(v, f'{prefix}{k}.')


def _field_under_a_value(argv: Sequence[str], config) -> Optional[str]:
  """The line for --config.a.b=V where `a` is a value (a float, a string), not a block: ml_collections reports
  it as an indexing error of the value's type, without the flag."""
  if config is None:
    path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    try:
      config = load_config(path) if path else None
    except Exception:  # noqa: BLE001  (the file's own errors are reported where it is loaded)
      return None
  for a in argv:
    if not a.startswith('--config.'):
      continue
    parts = a[len('--config.'):].split('=', 1)[0].split('.')
    block = config
    for i, part in enumerate(parts[:-1]):
      if not hasattr(block, 'keys') or part not in block.keys():
        break
      block = block[part]
      if not hasattr(block, 'keys'):
        parent = '.'.join(parts[:i + 1])
        return (f"--config.{'.'.join(parts)}: --config.{parent} is a {type(block).__name__}, not a block: it has "
                f'no field {parts[i + 1]!r}')
  return None


def _did_you_mean(text: str, config) -> str:
  """Adds a close field name to "--config.x: the config has no field 'x'" (absl gives one only for files)."""
  m = re.match(r"(--config\.((?:[^.=\s]+\.)*)([^.=\s]+)): the config has no field '[^']*'$", text)
  if not m or config is None:
    return text
  flag, parents, bad = m.groups()
  block = config
  for part in parents.rstrip('.').split('.') if parents else []:
    block = block.get(part) if hasattr(block, 'get') else None
  if not hasattr(block, 'keys'):
    return text
  close = difflib.get_close_matches(bad, list(block.keys()), n=1, cutoff=0.6)
  return f'{text}; did you mean --config.{parents}{close[0]}?' if close else text


def main(argv: Optional[Sequence[str]], settings_cls: Type[T], body: Callable[[T], int], *, prog: str,
         doc: str = '', missing_hint: str = '', default: Optional[Callable[[], ml_collections.ConfigDict]] = None
         ) -> int:
  """Parses `argv` (the arguments, without the program name; None: sys.argv[1:]) into `settings_cls` and
  returns `body(settings)`, or 2 after one `error:` line on stderr for any mistake.

  `default`: the command's config when no --config=FILE is given (a function returning a ConfigDict, usually
  `settings.config_dict(settings_cls)`); without one, --config=FILE is required and `missing_hint` says which.
  `prog` ('python -m hv_jax.evaluate') names the command in errors of the flags and in --help. A UserError
  raised by `body` becomes its one line, exit code 2.
  """
  args = list(sys.argv[1:] if argv is None else argv)
  full = [prog] + args
  hint = f' (python -m {prog.replace("python -m ", "")} --help for usage)'

  def fail(message: str) -> int:
    print(f'error: {one_line(message)}', file=sys.stderr)
    return 2

  if any(a in ('-h', '-help', '--help', '--helpfull', '--helpshort') for a in args):
    print(usage(prog, doc, settings_cls, default))
    return 0
  given = any(a == '--config' or a.startswith('--config=') for a in args)
  fv = flags.FlagValues()
  config = None
  try:
    if default is not None and not given:
      config = default()
      config_flags.DEFINE_config_dict('config', config, 'settings', flag_values=fv, lock_config=True,
                                      sys_argv=full)
    else:
      config_flags.DEFINE_config_file('config', None, 'config file', flag_values=fv, lock_config=True,
                                      sys_argv=full)
    rest = fv(full)
  except Exception as e:  # noqa: BLE001  (absl and ml_collections raise several kinds)
    if default is None and not given:
      return fail(missing_hint)
    text = _field_under_a_value(args, config) or describe_flag_error(e, full)
    if text.startswith(('config file ', 'cannot load config file ')):
      return fail(text)                  # the file, not the command line
    return fail(_did_you_mean(text, config) + hint)
  if len(rest) > 1:
    return fail(f'unexpected argument {rest[1]!r}: every setting is a flag --config.<field>=VALUE' + hint)
  try:
    config = fv.config
    if config is not None:
      config.keys()    # a config that failed to load is a placeholder that raises on first use
  except Exception as e:  # noqa: BLE001
    return fail(describe_config_error(e, full))
  if config is None:
    return fail(missing_hint)
  try:
    s = settings_lib.from_dict(settings_cls, config.to_dict())
  except (settings_lib.SettingsError, TypeError, ValueError) as e:
    where = next((a.split('=', 1)[1] for a in args if a.startswith('--config=')), '')
    return fail(f'config file {where}: {e}' if where else str(e))
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()    # absl logging then writes without its "before flag parsing" warning
  try:
    return body(s)
  except UserError as e:
    return fail(str(e))
  except MemoryError as e:   # numpy's allocation of a size the settings asked for (e.g. a mesh_resolution)
    return fail(f'out of memory: {e}; lower the sizes in the settings (what was written so far is kept)')
  except Exception as e:  # noqa: BLE001
    if 'RESOURCE_EXHAUSTED' not in str(e).split('\n', 1)[0]:     # XLA's out-of-memory error
      raise
    return fail(f'out of device memory: {one_line(str(e).splitlines()[0])[:300]}; lower the batch sizes in the '
                'settings (per_device_batch, batch_view_num, ...) (what was written so far is kept)')
