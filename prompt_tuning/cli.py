"""``prompt-tuning {train,eval,infer,sweep,export} [--config FILE] [--config.KEY=VALUE ...]``.

Parses the flags, dispatches to prompt_tuning.run, and turns a user error into one ``error:``
line on stderr with exit status 2. A training run (or sweep) stopped by SIGTERM / SIGINT after
saving a checkpoint prints one line and exits with status 75 (prompt_tuning/run/stop.py).
``python -m prompt_tuning.train`` is ``prompt-tuning train``.
"""
import json
import os
import sys

USAGE = ("usage: prompt-tuning {train,eval,infer,sweep,export} [--config FILE] "
         "[--config.KEY=VALUE ...]\n       prompt-tuning export ... --format {peft,hf,prompt} "
         "--out DIR [--step N]")
COMMANDS = ("train", "eval", "infer", "sweep", "export")


def parse_flags(argv):
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  default = os.path.join(os.path.dirname(__file__), "default_config.py")
  # sys_argv: the overrides are found in ``argv`` (not sys.argv) when called from Python.
  config_flags.DEFINE_config_file("config", default, "experiment config file", flag_values=fv,
                                  lock_config=True, sys_argv=list(argv))
  flags.DEFINE_integer("step", None, "checkpoint step (default: latest)", flag_values=fv)
  flags.DEFINE_multi_string("input", [], "input text for `infer` (repeatable)", flag_values=fv)
  flags.DEFINE_multi_string("prompt_run", [], "TASK=RUN_DIR: mixed-task `infer` with the prompt "
                            "stored in each run (inputs then are TASK::TEXT)", flag_values=fv)
  flags.DEFINE_list("allow_changed", [], "config keys deliberately changed from the stored run "
                    "(train resume, eval, infer); 'all' accepts any change", flag_values=fv)
  flags.DEFINE_bool("rank", False, "`infer`: also rank the task's class labels by "
                    "log-likelihood", flag_values=fv)
  flags.DEFINE_string("format", "", "`export`: peft | hf | prompt", flag_values=fv)
  flags.DEFINE_string("out", "", "`export`: output directory", flag_values=fv)
  fv(argv)
  return fv


def error_line(e: BaseException) -> str:
  """The exception's own message on one line, nothing stripped from it."""
  # ml_collections raises AttributeError(KeyError(message)) for an unknown key, and str() of a
  # KeyError is the repr of its message (quoted, newlines escaped): use the innermost message.
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  if isinstance(e, OSError) and e.errno is not None:
    text = str(e)  # "[Errno 2] No such file or directory: 'x'"; args[0] alone is the number
  else:
    text = str(e.args[0]) if e.args else str(e)
  return " ".join(line.strip() for line in text.splitlines() if line.strip())


def execute(command: str, argv) -> int:
  """Runs one verb with flags ``argv`` (``argv[0]`` is the program name); returns the exit
  status. The result is printed as JSON on stdout."""
  from prompt_tuning.run import evaluate, infer, loop, stop, sweep
  try:
    fv = parse_flags(list(argv))
    config = fv.config
    if command == "train":
      result = loop.train(config, fv.allow_changed)
    elif command == "eval":
      result = evaluate.evaluate(config, fv.step, fv.allow_changed)
    elif command == "sweep":
      result = sweep.sweep(config, sweep.load_sweep(fv["config"].config_filename))
    elif command == "infer":
      if fv.prompt_run:  # mixed-task batch: --prompt_run TASK=DIR, --input TASK::TEXT
        bad = [r for r in fv.prompt_run if "=" not in r]
        if bad:
          raise ValueError(f"--prompt_run takes TASK=RUN_DIR; got {bad[0]!r}")
        runs = dict(r.split("=", 1) for r in fv.prompt_run)
        pairs = []
        for text in fv.input:
          if "::" not in text:
            raise ValueError(f"with --prompt_run, inputs are TASK::TEXT; got {text!r}")
          pairs.append(tuple(text.split("::", 1)))
        result = {"outputs": infer.infer_mixed(config, runs, pairs, fv.step)}
      else:
        result = infer.infer(config, fv.input, fv.step, fv.allow_changed, fv.rank)
    elif command == "export":
      from prompt_tuning.run import export
      result = export.export(config, fv.out, fv.format, fv.step, fv.allow_changed)
    else:
      raise ValueError(f"unknown command {command!r}; use train, eval, infer, sweep or export")
  except stop.Preempted as e:
    print(e, file=sys.stderr, flush=True)
    return stop.EXIT_PREEMPTED
  except (ValueError, KeyError, OSError, loop.TrainingError, AttributeError) as e:
    text = error_line(e)
    if isinstance(e, AttributeError):  # ml_collections: unknown config key
      text = f"unknown config key {text}"
    print(f"error: {type(e).__name__}: {text}", file=sys.stderr)
    return 2
  except Exception as e:  # flags errors and the like: still one line
    from absl import flags
    if isinstance(e, flags.Error):
      print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
      return 2
    raise
  print(json.dumps(result, indent=1, sort_keys=True), flush=True)
  return 0


def main(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    print(USAGE, file=sys.stderr)
    return 2
  from prompt_tuning.run import stop   # a signal ends the command at once, cleanly, except
  stop.exit_on_signal(argv[1])         # while a training run can stop with a checkpoint
  return execute(argv[1], [argv[0]] + argv[2:])


if __name__ == "__main__":
  sys.exit(main())
