"""Spreading sampling work over devices and hosts.

Work units are (input, instance) pairs. Instances never communicate, so the recipe is data parallelism:
- hosts: `jax.distributed.initialize()` (TPU pods / multi-GPU); each process takes a deterministic share
  of the units (`process_share`) and writes only its own outputs;
- devices of a host: a 1-axis `Mesh(('data',))`; each batch is padded to a multiple of the device count
  (`pad_batch`), sharded along 'data' with `NamedSharding`, and the padding is dropped afterwards
  (`run_batches`: the one batch loop of sampling and of the studies).
Params are replicated (an SD-1.x-sized UNet fits on every accelerator we target).
"""
from __future__ import annotations

import time
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

T = TypeVar('T')


def initialize_distributed(enabled: bool, coordinator_address: str = '', num_processes: int = 0,
                           process_id: int = -1) -> None:
  """Multi-host setup. Without arguments the coordinator, process count and id come from the environment
  (TPU metadata, SLURM, ...); give them explicitly for e.g. several CPU processes on one machine."""
  if not enabled or jax.distributed.is_initialized():
    return
  kwargs = {}
  if coordinator_address:
    kwargs = dict(coordinator_address=coordinator_address, num_processes=int(num_processes),
                  process_id=int(process_id))
  jax.distributed.initialize(**kwargs)


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-axis ('data',) mesh over this process's devices."""
  devices = jax.local_devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), ('data',))


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def process_share(units: Sequence[T], index: Optional[int] = None, count: Optional[int] = None) -> List[T]:
  """The units this process owns: every count-th unit starting at its index (deterministic, disjoint)."""
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  return list(units[index::count])


def pad_batch(arrays, multiple: int) -> Tuple[list, int]:
  """Pads each array's leading axis to a multiple of `multiple` by repeating its last row.

  Returns (padded arrays, number of real rows). Repeating a real row (not zeros) keeps the padding rows
  numerically harmless; they are dropped after the call.
  """
  n = arrays[0].shape[0]
  target = -(-n // multiple) * multiple
  out = []
  for a in arrays:
    a = np.asarray(a)
    if target > n:
      a = np.concatenate([a, np.repeat(a[-1:], target - n, axis=0)], 0)
    out.append(a)
  return out, n


def shard_batch(arrays, mesh: Mesh) -> list:
  """Host arrays -> jax.Arrays split along 'data' over this process's devices (explicitly: with several
  processes, jit refuses numpy inputs for a sharded argument)."""
  sharding = data_sharding(mesh)
  return [jax.device_put(np.asarray(a), sharding) for a in arrays]


def run_batches(fn: Callable, units: Sequence[T], batch: int, arrays_of: Callable[[Sequence[T]], list],
                mesh: Mesh) -> Iterator[Tuple[List[T], np.ndarray, float]]:
  """The sharded batch loop: `batch` units at a time, host arrays -> pad -> shard -> fn -> host.

  arrays_of(chunk) gives a chunk's host arrays (leading axis len(chunk)); fn(*arrays) sees them padded to
  `batch` rows (every call has one shape: the last chunk does not recompile) and sharded along 'data' over
  `mesh`; its output [batch, ...] comes back to the host without the padding rows. Yields (chunk, outputs
  [len(chunk), ...], seconds of the call and the transfer), in unit order. Where fn's rows depend only on
  their own inputs (the sampler's do), the outputs do not depend on `batch` or on the device count.
  """
  for start in range(0, len(units), batch):
    chunk = list(units[start:start + batch])
    arrays, n_real = pad_batch(arrays_of(chunk), batch)
    arrays = shard_batch(arrays, mesh)
    t0 = time.perf_counter()
    out = np.asarray(jax.device_get(fn(*arrays)))[:n_real]
    yield chunk, out, time.perf_counter() - t0
