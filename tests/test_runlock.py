"""Run-directory lock: a second writer is refused naming the holder; a dead holder's lock is
reclaimed with a warning; released on exit and on exceptions; multi-process runs share it."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from prompt_tuning import runlock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)

HOLD = r"""
import sys, time
from prompt_tuning import runlock
with runlock.RunLock(sys.argv[1], command="holder-script --train"):
  print("held", flush=True)
  time.sleep(120)
"""


def holder(d):
  """A subprocess that holds the lock on ``d`` (no jax import: starts fast)."""
  p = subprocess.Popen([sys.executable, "-c", HOLD, str(d)], cwd=ROOT, env=ENV,
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  return p


def test_lock_is_released_on_exit_and_on_exception(tmp_path):
  d = tmp_path / "run"
  with runlock.RunLock(str(d), command="first") as lock:
    assert lock.held
    info = json.loads((d / "run.lock").read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert info["command"] == "first" and info["start_time"]
  assert not (d / "run.lock").exists() and not lock.held
  with pytest.raises(KeyError):
    with runlock.RunLock(str(d)):
      raise KeyError("boom")
  assert not (d / "run.lock").exists()
  with runlock.RunLock(str(d)):  # free again
    pass


def test_second_holder_is_refused_naming_the_holder(tmp_path, capsys):
  p = holder(tmp_path)
  try:
    with pytest.raises(runlock.RunLockError) as e:
      with runlock.RunLock(str(tmp_path)):
        pass
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tmp_path} is in use by another run (pid {p.pid} on host "
                          f"{socket.gethostname()}, started ")
    assert "command: holder-script --train)" in msg and "use another output_dir" in msg
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == p.pid  # left untouched
  finally:
    p.kill()
    p.wait()
  assert capsys.readouterr().err == ""


def test_lock_of_a_killed_process_is_reclaimed_with_a_warning(tmp_path, capsys):
  p = holder(tmp_path)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert json.loads((tmp_path / "run.lock").read_text())["pid"] == p.pid  # left behind
  with runlock.RunLock(str(tmp_path)):
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith(f"warning: reclaimed the lock on {tmp_path} left by a run that is no "
                         f"longer running (pid {p.pid} on host {socket.gethostname()}")


def test_stale_record_of_a_dead_pid_is_reclaimed(tmp_path, capsys):
  dead = subprocess.Popen(["true"])
  dead.wait()
  (tmp_path / "run.lock").write_text(json.dumps(
      {"pid": dead.pid, "host": socket.gethostname(), "start_time": "yesterday",
       "command": "old run"}))
  with runlock.RunLock(str(tmp_path)):
    pass
  assert f"pid {dead.pid}" in capsys.readouterr().err


def test_record_from_another_host_is_not_reclaimed(tmp_path):
  """flock may only be local (some NFS mounts, FUSE): never guess that a remote run died."""
  (tmp_path / "run.lock").write_text(json.dumps(
      {"pid": 1234, "host": "some-other-host", "start_time": "t0", "command": "remote run"}))
  with pytest.raises(runlock.RunLockError, match=r"pid 1234 on host some-other-host.*"
                                                 r"another host.*delete .*run\.lock"):
    runlock.RunLock(str(tmp_path)).acquire()


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch, capsys):
  def no_flock(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(runlock.fcntl, "flock", no_flock)
  live = subprocess.Popen(["sleep", "60"])
  try:
    (tmp_path / "run.lock").write_text(json.dumps(
        {"pid": live.pid, "host": socket.gethostname(), "start_time": "t0", "command": "sleep"}))
    with pytest.raises(runlock.RunLockError, match=f"pid {live.pid}"):
      runlock.RunLock(str(tmp_path)).acquire()
  finally:
    live.kill()
    live.wait()
  with runlock.RunLock(str(tmp_path)):  # now dead: reclaimed
    pass
  assert "reclaimed" in capsys.readouterr().err


def test_other_processes_of_a_multi_process_run_are_not_refused(tmp_path):
  with runlock.RunLock(str(tmp_path), process_index=0, process_count=2):
    with runlock.RunLock(str(tmp_path), process_index=1, process_count=2) as other:
      assert not other.held  # only process 0 holds the lock for the run
    assert (tmp_path / "run.lock").exists()  # process 1 leaving does not release it
  assert not (tmp_path / "run.lock").exists()


def test_cli_refuses_a_second_run_on_the_same_output_dir(tmp_path):
  out = tmp_path / "out"
  with runlock.RunLock(str(out), command="first training run"):
    r = subprocess.run([sys.executable, "-m", "prompt_tuning.train",
                        f"--config.output_dir={out}", "--config.train.num_steps=2"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith(f"error: RunLockError: {out} is in use by another run (pid "
                              f"{os.getpid()} on host ")
  assert "command: first training run" in lines[-1]
  assert not any("Traceback" in l for l in lines), r.stderr
  assert not (out / "checkpoints").exists()  # refused before writing anything
