"""hv_jax.checks (numeric settings at the entry points, settings differences) and hv_jax.atomic's folders."""
import json

import pytest

from hv_jax import atomic, checks
from hv_jax.errors import UserError


@pytest.mark.parametrize('value,kw,message', [
    (float('nan'), {}, 'x=nan: must be a finite number'),
    (float('inf'), {'lo': 0}, 'x=inf: must be a finite number'),
    (-1.0, {'lo': 0}, 'x=-1.0: must be >= 0'),
    (0.0, {'lo': 0, 'lo_open': True}, 'x=0.0: must be > 0'),
    (5, {'lo': 1, 'hi': 4, 'integer': True}, 'x=5: must be in [1, 4]'),
    (2.5, {'integer': True}, 'x=2.5: must be an integer'),
    ('a', {}, "x='a': must be a number"),
    (True, {}, 'x=True: must be a number'),
])
def test_bad_numbers_are_one_line(value, kw, message):
  with pytest.raises(UserError) as e:
    checks.check_number('x', value, **kw)
  assert str(e.value).startswith(message) and '\n' not in str(e.value)


def test_good_numbers_pass_converted():
  assert checks.check_number('x', 3.0, integer=True) == 3 and isinstance(checks.check_number('x', 2), float)


def test_write_json_refuses_non_finite_numbers(tmp_path):
  with pytest.raises(ValueError):
    atomic.write_json(tmp_path / 'a.json', {'eta': float('nan')})
  assert not (tmp_path / 'a.json').exists()
  atomic.write_json(tmp_path / 'b.json', {'eta': 1.0})
  assert json.loads((tmp_path / 'b.json').read_text()) == {'eta': 1.0}


def test_settings_differences_are_named():
  assert checks.settings_difference({'a': 1}, {'a': 1}) == ''
  assert checks.settings_difference({'seed': 0, 'm': {'x': 1}}, {'seed': 7, 'm': {'x': 2}}) == \
      'm, seed; e.g. seed: 0 there, 7 now'
  assert checks.differing_keys({'a': {'b': 1, 'c': 2}}, {'a': {'b': 1, 'c': 3}, 'd': 0}) == ['a.c', 'd']


def test_output_folders_are_probed_without_being_created(tmp_path):
  assert atomic.writable_problem(tmp_path / 'new' / 'deeper') == ''
  assert not (tmp_path / 'new').exists() and list(tmp_path.iterdir()) == []
  (tmp_path / 'file').write_text('x')
  assert 'is not a folder' in atomic.writable_problem(tmp_path / 'file' / 'sub')
  created = atomic.make_dirs(tmp_path / 'a' / 'b')
  assert created == [tmp_path / 'a', tmp_path / 'a' / 'b']
  atomic.remove_empty_dirs(created)
  assert not (tmp_path / 'a').exists()
