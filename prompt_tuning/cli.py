"""``prompt-tuning {train,eval,infer} [--config FILE] [--config.key=value ...]``."""
import sys

USAGE = "usage: prompt-tuning {train,eval,infer,sweep} [--config FILE] [--config.KEY=VALUE ...]"


def main(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in ("train", "eval", "infer", "sweep"):
    print(USAGE, file=sys.stderr)
    return 2
  from prompt_tuning import train
  return train.main([argv[0]] + argv[2:], command=argv[1])


if __name__ == "__main__":
  sys.exit(main())
