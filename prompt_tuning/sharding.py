"""Mesh construction and T5X-style logical axis rules.

Parameters carry logical axis names (``axes`` metadata); activations are annotated with
:func:`with_logical_constraint`. A rule table maps logical names to mesh axes ``("data",
"model")``. The same code runs on one CPU, one GPU, many devices and many hosts: with a single
device every constraint is a no-op.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Iterable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "model")

# Logical name -> mesh axis (or None = replicated). Batch is data parallel; the wide
# dimensions (vocab, mlp, heads) are model parallel, as in T5X's standard rules.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("kv", None),
    ("embed", None),
    ("length", None),
    ("relpos_buckets", None),
    ("prompt", None),
    ("tasks", None),
)

_state = threading.local()


def _ctx():
  if not hasattr(_state, "mesh"):
    _state.mesh, _state.rules = None, DEFAULT_RULES
  return _state


def current_mesh() -> Mesh | None:
  return _ctx().mesh


def current_rules():
  return _ctx().rules


@contextlib.contextmanager
def axis_rules(mesh: Mesh | None, rules: Iterable[tuple[str, str | None]] | None = None):
  """Makes ``mesh`` and ``rules`` the ones used by logical constraints inside the block."""
  ctx = _ctx()
  old = ctx.mesh, ctx.rules
  ctx.mesh = mesh
  ctx.rules = tuple(rules) if rules is not None else DEFAULT_RULES
  try:
    yield
  finally:
    ctx.mesh, ctx.rules = old


_DISTRIBUTED: dict = {}


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> None:
  """Calls ``jax.distributed.initialize`` for multi-host runs, once per process (a sweep builds
  many runs in one process); no-op when not configured. Asking again with other settings is an
  error: a process cannot join a second cluster."""
  if not coordinator_address:
    return
  want = (coordinator_address, num_processes, process_id)
  if _DISTRIBUTED:
    if _DISTRIBUTED["settings"] != want:
      raise ValueError(f"this process already joined {_DISTRIBUTED['settings']}; cannot "
                       f"initialize jax.distributed again with {want}")
    return
  # CPU processes need a collectives backend to talk to each other (tests over loopback);
  # accelerator backends ignore this option.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  _DISTRIBUTED["settings"] = want


def is_main_process() -> bool:
  """Process 0 writes logs, metrics, TensorBoard events and summaries."""
  return jax.process_index() == 0


def gather(x) -> np.ndarray:
  """A (possibly multi-host, sharded) array as one numpy array on every host."""
  if jax.process_count() > 1 and isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:   # e.g. a metric sum: every host holds it whole
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def allgather_objects(items: list) -> list:
  """Concatenation, in process order, of every process's list of picklable objects (one
  process: the list itself). Used for the raw examples behind a streamed dev set's rows."""
  if jax.process_count() == 1:
    return list(items)
  import pickle
  from jax.experimental import multihost_utils
  blob = np.frombuffer(pickle.dumps(list(items)), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([blob.size], np.int64)))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:blob.size] = blob
  blobs = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes.ravel()), -1)
  return [x for b, n in zip(blobs, sizes.ravel()) for x in pickle.loads(b[:n].tobytes())]


def make_mesh(mesh_shape: Sequence[int] = (-1, 1), devices=None) -> Mesh:
  """Builds a ``(data, model)`` mesh. One entry may be -1 (= all remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(mesh_shape)
  if len(shape) != 2:
    raise ValueError(f"mesh_shape must have 2 entries (data, model), got {tuple(mesh_shape)}")
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh_shape entry may be -1, got {tuple(mesh_shape)}")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into mesh_shape {tuple(mesh_shape)}")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh_shape {tuple(shape)} needs {math.prod(shape)} devices, "
                     f"{len(devices)} available")
  try:
    from jax.experimental import mesh_utils
    dev_array = mesh_utils.create_device_mesh(tuple(shape), devices=devices)
  except Exception:  # e.g. unusual topologies: fall back to the given order.
    dev_array = np.asarray(devices).reshape(shape)
  return Mesh(dev_array, MESH_AXES)


def logical_to_spec(axes: Sequence[str | None] | None, rules=None, mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None) -> P:
  """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once, and a
  dimension that the mesh axis does not divide stays replicated."""
  if axes is None:
    return P()
  table = dict(current_rules() if rules is None else rules)
  used, out = set(), []
  for i, name in enumerate(axes):
    mesh_axis = table.get(name) if name is not None else None
    if mesh_axis is not None and mesh_axis not in used:
      if mesh is not None and shape is not None and shape[i] % mesh.shape[mesh_axis]:
        mesh_axis = None
    else:
      mesh_axis = None
    if mesh_axis is not None:
      used.add(mesh_axis)
    out.append(mesh_axis)
  return P(*out)


def with_logical_constraint(x, axes):
  mesh = current_mesh()
  if mesh is None or mesh.size == 1:
    return x
  spec = logical_to_spec(axes, mesh=mesh, shape=x.shape)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def state_shardings(state, mesh: Mesh, rules=None):
  """NamedSharding for every Variable of an ``nnx.State`` (a prefix tree of the state)."""
  from flax import nnx

  def one(v):
    axes = v.get_metadata().get("axes") if isinstance(v, nnx.Variable) else None
    shape = np.shape(v[...] if isinstance(v, nnx.Variable) else v)
    if axes is not None and len(axes) != len(shape):
      axes = None  # e.g. factored optimizer statistics: replicate.
    return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, shape))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def local_data_size(mesh: Mesh) -> int:
  """How many rows of a global batch this host's devices hold per data-parallel row block:
  a host's rows must divide evenly over its devices along ``data``."""
  idx = mesh.axis_names.index("data")
  local = {d.id for d in mesh.local_devices}
  rows = {i for i, d in np.ndenumerate(mesh.devices) if d.id in local}
  return len({i[idx] for i in rows})


def shard_batch(batch: dict, mesh: Mesh | None):
  """Places a host-local numpy batch on the mesh, split over ``data`` along axis 0.

  On several hosts each host passes its own rows (see data.pipeline.host_rows); the global
  array is assembled from them.
  """
  if mesh is None:
    return jax.tree.map(jax.numpy.asarray, batch)
  sh = batch_sharding(mesh)
  n = local_data_size(mesh) if jax.process_count() > 1 else mesh.shape["data"]
  for k, v in batch.items():
    if np.shape(v)[0] % n:
      raise ValueError(f"batch[{k!r}] has {np.shape(v)[0]} rows on this host, not divisible by "
                       f"its {n} data-parallel devices")
  if jax.process_count() > 1:
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sh, np.asarray(x)), batch)
  return jax.device_put(batch, sh)
