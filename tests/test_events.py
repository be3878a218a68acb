"""TensorBoard event files written without TensorFlow, read back with TensorFlow's reader."""
import glob
import io

import pytest

from prompt_tuning import events


def test_crc32c_known_value():
  assert events.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def test_event_file_reads_back_with_tensorflow(tmp_path):
  tf = pytest.importorskip("tensorflow")
  w = events.EventWriter(str(tmp_path))
  w.scalars(5, {"train/loss": 1.25, "train/tokens_per_s": 1000})
  w.scalars(10, {"train/loss": 0.5, "ignored": "text"})
  w.close()
  (path,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  seen = []
  for ev in tf.compat.v1.train.summary_iterator(path):
    for v in ev.summary.value:
      seen.append((ev.step, v.tag, round(v.simple_value, 4)))
  assert seen == [(5, "train/loss", 1.25), (5, "train/tokens_per_s", 1000.0),
                  (10, "train/loss", 0.5)]


def test_progress_bar_only_on_terminals():
  buf = io.StringIO()
  p = events.Progress(10, stream=buf)
  p.update(5, loss=0.5)
  assert buf.getvalue() == ""

  class Tty(io.StringIO):
    def isatty(self):
      return True

  t = Tty()
  p = events.Progress(10, stream=t)
  p.update(5, loss=0.5)
  assert "5/10" in t.getvalue() and "loss 0.5" in t.getvalue() and "#" * 15 in t.getvalue()
