"""The config-file CLIs (`--config=FILE --config.field=value`): every mistake in the flags or the config file
is one `error: ...` line and exit code 2, never a traceback.

ml_collections reports a misspelt field as an AttributeError deep inside absl's flag parsing (a 40-line
traceback ending in 'Did you mean "sample_num"'), and a missing or broken config file only when the config
is first read. `run` parses the flags itself and turns both, and absl's own flag errors, into one line.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, Optional, Sequence

from absl import app, flags
from ml_collections import config_flags

from hv_jax.errors import UserError


def define_config(help_text: str):
  """The --config flag of a CLI (a Python file with get_config(); fields overridable as --config.x=...)."""
  return config_flags.DEFINE_config_file('config', None, help_text, lock_config=True)


def no_checkout(what: str) -> UserError:
  """The one line when `convert` cannot be imported: convert/ (PyTorch -> Flax) lives in the repository
  checkout and is not installed with hv_jax; the commands run from the checkout's root find it."""
  return UserError(f'{what} needs convert/ of the hv_jax repository checkout, which is not installed with the '
                   'package: run the command (python -m ...) in the root folder of a clone of the repository')


def one_line(text: str) -> str:
  return ' '.join(str(text).split())


def describe_flag_error(e: BaseException, argv: Sequence[str]) -> str:
  """One line for an exception raised while parsing the flags."""
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


def run(main: Callable[[object], int], config_flag, missing_hint: str, argv: Optional[Sequence[str]] = None) -> None:
  """Parses flags (one line on any error), loads the config (one line on any error), calls main(config).

  main returns the exit code; a UserError from it becomes `error: <message>` and exit code 2.
  """
  argv = list(sys.argv if argv is None else argv)

  def parse(args):
    try:
      return flags.FLAGS(args)
    except Exception as e:  # noqa: BLE001  (absl and ml_collections raise several kinds)
      no_config = not any(a == '--config' or a.startswith('--config=') for a in args)
      print(f'error: {missing_hint if no_config else describe_flag_error(e, args)}', file=sys.stderr)
      sys.exit(2)

  def body(_):
    try:
      config = config_flag.value
      if config is not None:
        config.keys()    # a config that failed to load is a placeholder that raises on first use
    except Exception as e:  # noqa: BLE001
      print(f'error: {describe_config_error(e, argv)}', file=sys.stderr)
      return 2
    if config is None:
      print(f'error: {missing_hint}', file=sys.stderr)
      return 2
    try:
      return main(config)
    except UserError as e:
      print(f'error: {one_line(e)}', file=sys.stderr)
      return 2

  app.run(lambda a: sys.exit(body(a)), argv=argv, flags_parser=parse)


class ArgumentParser(argparse.ArgumentParser):
  """argparse for the flag-style CLIs (evaluate, evaluate_mesh, report, the converters): a usage mistake is
  one `error:` line and exit code 2, like the config-file CLIs (argparse prints the whole usage first)."""

  def error(self, message):
    self.exit(2, f'error: {one_line(message)} (python -m {self.prog.replace("python -m ", "")} --help for usage)\n')
