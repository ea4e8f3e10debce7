"""DDIM step counts: every count either runs exactly that many in-range timesteps or is refused in one line."""
import numpy as np
import pytest

from hv_jax.sampling import schedule
from hv_jax.sampling.ddim import DDIMTables


@pytest.mark.parametrize('spacing', schedule.SPACINGS)
def test_every_step_count_is_exact_or_refused_in_one_line(spacing):
  ran = []
  for n in range(1, schedule.NUM_TIMESTEPS + 1):
    try:
      ts = schedule.ddim_timesteps(n, spacing)
    except schedule.ScheduleError as e:
      assert '\n' not in str(e) and str(n) in str(e)
      continue
    assert len(ts) == n and ts[0] == 1 and ts[-1] <= schedule.NUM_TIMESTEPS - 1
    assert np.all(np.diff(ts) > 0)
    ran.append(n)
  if spacing == 'uniform':     # the original's arithmetic: exactly the divisors of 1000 (50 among them)
    assert ran == [1, 2, 4, 5, 8, 10, 20, 25, 40, 50, 100, 125, 200, 250, 500]
  else:
    assert ran == list(range(1, schedule.NUM_TIMESTEPS))


def test_the_original_schedule_is_kept_where_it_is_exact():
  for n in schedule.exact_uniform_counts():
    want = np.arange(0, 1000, 1000 // n) + 1        # SyncDDIMSampler._make_schedule('uniform')
    np.testing.assert_array_equal(schedule.ddim_timesteps(n), want)
    np.testing.assert_array_equal(schedule.ddim_timesteps(n, 'uniform_exact'), want)


def test_refusals_name_the_nearest_counts_that_work():
  with pytest.raises(schedule.ScheduleError, match=r'gives 8 timesteps.*nearest: 5 and 8.*uniform_exact'):
    schedule.ddim_timesteps(7)
  with pytest.raises(schedule.ScheduleError, match=r'gives 31 timesteps.*nearest: 25 and 40'):
    schedule.ddim_timesteps(30)
  with pytest.raises(schedule.ScheduleError, match=r'reaches t=1000.*nearest: 2 and 4'):
    schedule.ddim_timesteps(3)
  with pytest.raises(schedule.ScheduleError, match=r'reaches t=1000.*nearest: 500\b'):
    schedule.ddim_timesteps(999)


def test_tables_follow_the_spacing():
  t = DDIMTables.make(7, 'uniform_exact')
  assert t.num_steps == 7 and list(np.asarray(t.timesteps)) == [1, 143, 286, 429, 572, 715, 858]
