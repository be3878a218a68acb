"""One process of the two-process CPU run of test_checkpoint_integrity.test_two_processes
(jax.distributed over gloo): argv = process_id, port, run_dir, locked_dir."""
import os
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, port, d, locked = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from prompt_tuning import checkpoint, runlock  # noqa: E402
from prompt_tuning.trainer import TrainState  # noqa: E402

# Another run holds `locked`: process 0 is refused, and process 1 learns it by broadcast.
try:
  runlock.RunLock(locked).acquire()
  print(pid, "not refused")
except runlock.RunLockError as e:
  print(pid, "refused:", str(e).split(" (")[0], flush=True)

mesh = Mesh(np.array(jax.devices()), ("data",))
rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
x = np.arange(8 * 4, dtype=np.float32).reshape(8, 4)


def glob(a, sharding):
  return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def state(step, a):
  return TrainState(step=jnp.asarray(step, jnp.int32), params={"w": glob(a, rows)},
                    opt_state={"m": glob(a * 2, rep)})


with runlock.RunLock(d) as lock:
  print(pid, "holds the run lock:", lock.held, flush=True)
  ck = checkpoint.Checkpointer(os.path.join(d, "ck"))
  ck.save(state(3, x), data_state=f"process {pid} at 3".encode())
  ck.save(state(5, x + 1), data_state=f"process {pid} at 5".encode())
  multihost_utils.sync_global_devices("saved")
  if pid == 1:  # only process 1's state of step 5 is damaged: both processes must go back to 3
    with open(os.path.join(d, "ck", "5", "data_state", "process_1-of-2.bin"), "ab") as f:
      f.write(b"x")
  multihost_utils.sync_global_devices("damaged")
  r, _, blob = checkpoint.Checkpointer(os.path.join(d, "ck")).restore(
      state(0, np.zeros_like(x)), with_data_state=True)
  w = multihost_utils.process_allgather(r.params["w"], tiled=True)
  assert np.array_equal(np.asarray(w), x)
  print(pid, "restored step", int(r.step), blob.decode(), flush=True)
