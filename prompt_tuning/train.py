"""``python -m prompt_tuning.train``: the same as ``prompt-tuning train`` (prompt_tuning/cli.py).
The training loop itself is prompt_tuning/run/loop.py.

  python -m prompt_tuning.train --config configs/tiny.py --config.method.name=lora
"""
import sys

from prompt_tuning import cli


def main(argv=None) -> int:
  return cli.execute("train", list(sys.argv if argv is None else argv))


if __name__ == "__main__":
  from prompt_tuning.run import stop
  stop.exit_on_signal("train")   # until the training loop takes over the signals
  sys.exit(main())
