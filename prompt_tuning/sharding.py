"""Mesh construction and T5X / MaxText-style logical axis rules.

Parameters carry logical axis names (``axes`` metadata); activations are annotated with
:func:`with_logical_constraint`. A rule table (``mesh.axis_rules`` in the config) maps logical
names to mesh axes ``("data", "fsdp", "model")``: ``data`` and ``fsdp`` both split the batch,
``fsdp`` also splits the weights' ``embed`` dimension (ZeRO-3 / FSDP: parameters, gradients and
optimizer state of the trainable weights, and the frozen weights, each held once per fsdp group,
gathered by XLA where a layer needs them), ``model`` splits the wide dimensions (tensor
parallelism). The same code runs on one CPU, one GPU, many devices and many hosts: with a single
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

MESH_AXES = ("data", "fsdp", "model")

# (logical name, mesh axis | tuple of mesh axes | None = replicated), T5X's format. For each
# dimension the first rule of its name whose mesh axes are all still free in that array (a mesh
# axis splits one dimension at most) and whose size divides the dimension is used; otherwise the
# dimension is replicated. Activations are (batch, length, embed): batch takes data and fsdp,
# so embed stays whole; weights have no batch dimension, so their embed dimension takes fsdp.
DEFAULT_RULES: tuple = (
    ("batch", ("data", "fsdp")),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("prompt", None),
    ("tasks", None),
)


def _mesh_axes(target) -> tuple:
  """A rule's target as a tuple of mesh axes (None: ())."""
  if target is None:
    return ()
  return (target,) if isinstance(target, str) else tuple(target)


def check_rules(rules) -> tuple:
  """The rules as a tuple of (name, target) pairs; a malformed rule or one naming a mesh axis
  that does not exist is a ValueError."""
  out = []
  for r in rules:
    if not (isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], str)
            and (r[1] is None or isinstance(r[1], (str, tuple, list)))):
      raise ValueError(f"mesh.axis_rules: each rule is (logical name, mesh axis or axes or "
                       f"None), got {r!r}")
    target = r[1] if r[1] is None or isinstance(r[1], str) else tuple(r[1])
    bad = [a for a in _mesh_axes(target) if a not in MESH_AXES]
    if bad or (target is not None and not isinstance(target, str)
               and not all(isinstance(a, str) for a in target)):
      raise ValueError(f"mesh.axis_rules: rule {r[0]!r} names mesh axis {bad or target!r}; the "
                       f"mesh axes are {MESH_AXES}")
    out.append((r[0], target))
  return tuple(out)


def full_shape(mesh_shape: Sequence[int]) -> tuple:
  """(data, fsdp, model) from a config's ``mesh.shape``: 3 entries as given, or 2 entries read
  as (data, model) with fsdp = 1 (configs written before the fsdp axis)."""
  shape = tuple(mesh_shape)
  if len(shape) == 2:
    return (shape[0], 1, shape[1])
  if len(shape) != 3:
    raise ValueError(f"mesh.shape must have 3 entries (data, fsdp, model) or 2 (data, model), "
                     f"got {shape}")
  return shape


def check_mesh_config(mesh_shape, rules) -> None:
  """What can be checked without devices: the shape's form and the rules."""
  shape = full_shape(mesh_shape)
  if any(not isinstance(s, int) or (s <= 0 and s != -1) for s in shape) or shape.count(-1) > 1:
    raise ValueError(f"mesh.shape must be positive integers (data, fsdp, model), at most one "
                     f"of them -1 (= all remaining devices); got {tuple(mesh_shape)}")
  check_rules(rules)


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


def make_mesh(mesh_shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
  """Builds a ``(data, fsdp, model)`` mesh (2 entries: ``(data, model)``). One entry may be -1
  (= all remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  given = tuple(mesh_shape)
  shape = list(full_shape(given))
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh_shape entry may be -1, got {given}")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into mesh_shape {given}")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh_shape {given} needs {math.prod(shape)} devices, "
                     f"{len(devices)} available")
  try:
    from jax.experimental import mesh_utils
    dev_array = mesh_utils.create_device_mesh(tuple(shape), devices=devices)
  except Exception:  # e.g. unusual topologies: fall back to the given order.
    dev_array = np.asarray(devices).reshape(shape)
  return Mesh(dev_array, MESH_AXES)


def logical_to_spec(axes: Sequence[str | None] | None, rules=None, mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None) -> P:
  """Maps logical axis names to a PartitionSpec: per dimension the first rule of its name whose
  mesh axes are unused so far and (given ``mesh`` and ``shape``) divide the dimension."""
  if axes is None:
    return P()
  rules = current_rules() if rules is None else rules
  used, out = set(), []
  for i, name in enumerate(axes):
    pick = None
    for rule_name, target in rules if name is not None else ():
      cand = _mesh_axes(target)
      if rule_name != name or not cand or used.intersection(cand):
        continue
      if mesh is not None and shape is not None and \
          shape[i] % math.prod(mesh.shape[a] for a in cand):
        continue
      pick = cand
      break
    if pick:
      used.update(pick)
    out.append(None if not pick else pick[0] if len(pick) == 1 else pick)
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


def batch_sharding(mesh: Mesh, rules=None) -> NamedSharding:
  """Rows split by the ``batch`` rule (by default over data x fsdp)."""
  return NamedSharding(mesh, logical_to_spec(("batch",), rules))


def batch_axes(mesh: Mesh, rules=None) -> tuple:
  spec = batch_sharding(mesh, rules).spec
  return _mesh_axes(spec[0]) if len(spec) else ()


def data_parallel_size(mesh: Mesh, rules=None) -> int:
  """Into how many row blocks a global batch is split (a batch size must be a multiple)."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))


def local_data_size(mesh: Mesh, rules=None) -> int:
  """How many row blocks of a global batch this host's devices hold: a host's rows must divide
  evenly over them."""
  idx = [mesh.axis_names.index(a) for a in batch_axes(mesh, rules)]
  local = {d.id for d in mesh.local_devices}
  blocks = {tuple(i[j] for j in idx) for i, d in np.ndenumerate(mesh.devices) if d.id in local}
  return len(blocks)


def shard_batch(batch: dict, mesh: Mesh | None, rules=None):
  """Places a host-local numpy batch on the mesh, its rows split by the ``batch`` rule.

  On several hosts each host passes its own rows (see data.pipeline.host_rows); the global
  array is assembled from them.
  """
  if mesh is None:
    return jax.tree.map(jax.numpy.asarray, batch)
  sh = batch_sharding(mesh, rules)
  n = local_data_size(mesh, rules) if jax.process_count() > 1 else data_parallel_size(mesh, rules)
  for k, v in batch.items():
    if np.shape(v)[0] % n:
      raise ValueError(f"batch[{k!r}] has {np.shape(v)[0]} rows on this host, not divisible by "
                       f"its {n} data-parallel devices")
  if jax.process_count() > 1:
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sh, np.asarray(x)), batch)
  return jax.device_put(batch, sh)
