"""``prompt-tuning VERB [--config FILE | --run DIR] [--config.KEY=VALUE ...] [flags]``.

Parses the flags, dispatches to prompt_tuning.run, and turns a user error into one ``error:``
line on stderr with exit status 2. ``prompt-tuning --help`` lists the verbs, ``prompt-tuning
VERB --help`` a verb's flags and every config key with its default and comment. A training
run (or sweep) stopped by SIGTERM / SIGINT after saving a checkpoint prints one line and exits
with status 75 (prompt_tuning/run/stop.py).
``python -m prompt_tuning.train`` is ``prompt-tuning train``.
"""
import copy
import json
import os
import re
import sys

from prompt_tuning import config_io
from prompt_tuning.config_io import ConfigError

# verb: (what it does, its flags besides the config's). One table for dispatch and help.
VERBS = {
    "train": ("Train a run into config.output_dir, or resume it from its latest checkpoint.",
              ("allow_changed",)),
    "eval": ("Evaluate a run's checkpoint on its dev sets (the training task and "
             "data.eval_tasks).", ("run", "step", "allow_changed")),
    "infer": ("Decode texts with a run: --input TEXT (repeatable) or --input_file FILE "
              "(jsonl, '-' = stdin); classification runs also rank their labels.",
              ("run", "step", "input", "input_file", "output_file", "rank", "prompt_run",
               "allow_changed")),
    "export": ("Write a run's tuned parameters for other tools: --format peft | hf | prompt "
               "--out DIR.", ("run", "step", "format", "out", "allow_changed")),
    "sweep": ("Train every run of the config file's get_sweep() into output_dir/<name>; print "
              "a table (mean +- std over seeds, best row marked), write results.jsonl, "
              "summary.json, sweep_table.csv and sweep.png.", ("metric",)),
    "config": ("Print the resolved config (file or run, then overrides); values that differ "
               "from the default say so.", ("run", "step")),
}
RUN_HELP = """\
Where the config comes from (one of):
  (nothing)          the default job (prompt_tuning/default_config.py, = configs/tiny.py)
  --config FILE      a config file whose get_config() returns the config (FILE:ARG calls
                     get_config(ARG)); configs/*.py start from the default
  --run DIR          eval / infer / export / config: the config the run in DIR was trained with
                     (model, method, tokenizer, data), read from its checkpoint
then --config.KEY=VALUE changes that key alone (e.g. --config.train.num_steps=1000).
eval / infer / export refuse a change that would make the run's numbers wrong (a different model,
method or data) unless --allow_changed=KEY names it."""
SWEEP_HELP = """\
get_sweep() in the config file returns a list of runs, each a dict:
  name         the run's directory under output_dir (required)
  group        runs summarised together (e.g. the seeds of one setting; default: the run alone)
  tags         design factors recorded in results.jsonl ({"k": 10, "seed": 0}), not applied
  KEY: VALUE   dotted config overrides ("method.prompt.length": 50, "seed": 1); a string value
               may contain {sweep_dir}, the sweep's output_dir
The table has a row per setting (the overrides and tags that vary, seeds aggregated)."""


def define_flags(fv):
  from absl import flags
  flags.DEFINE_string("run", "", "a finished (or training) run's output_dir: use the config it "
                      "was trained with", flag_values=fv)
  flags.DEFINE_integer("step", None, "checkpoint step (default: latest)", flag_values=fv)
  flags.DEFINE_multi_string("input", [], "input text for `infer` (repeatable)", flag_values=fv)
  flags.DEFINE_string("input_file", "", "`infer`: a jsonl file, one {\"inputs\": TEXT} object "
                      "(or a JSON string) per line; '-' reads stdin", flag_values=fv)
  flags.DEFINE_string("output_file", "-", "`infer --input_file`: where the jsonl results go "
                      "(each input record + \"output\", and \"ranked\" for classification runs); "
                      "'-' = stdout", flag_values=fv)
  flags.DEFINE_multi_string("prompt_run", [], "TASK=RUN_DIR: mixed-task `infer` with the prompt "
                            "stored in each run (inputs then are TASK::TEXT)", flag_values=fv)
  flags.DEFINE_list("allow_changed", [], "config keys deliberately changed from the stored run "
                    "(train resume, eval, infer, export); 'all' accepts any change",
                    flag_values=fv)
  flags.DEFINE_bool("rank", False, "`infer --input`: also rank the task's class labels by "
                    "log-likelihood", flag_values=fv)
  flags.DEFINE_string("format", "", "`export`: peft | hf | prompt", flag_values=fv)
  flags.DEFINE_string("out", "", "`export`: output directory", flag_values=fv)
  flags.DEFINE_string("metric", "", "`sweep`: the metric that picks the best row, TASK/NAME or "
                      "NAME of the training task (default: accuracy, else loss)", flag_values=fv)


# ------------------------------------------------------------------------------ parsing
def split_args(argv):
  """(config file or None, the --config.KEY overrides, the other arguments)."""
  config_file, overrides, rest = None, [], []
  i = 0
  while i < len(argv):
    a = argv[i]
    if a in ("--config", "-config"):
      if i + 1 >= len(argv):
        raise ConfigError("--config needs a file: --config FILE")
      config_file, i = argv[i + 1], i + 2
      continue
    if re.match(r"^--?config=", a):
      config_file = a.split("=", 1)[1]
    elif re.match(r"^--?config\.", a):
      overrides.append(a)
      if "=" not in a and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        overrides.append(argv[i + 1])   # --config.KEY VALUE
        i += 1
    else:
      rest.append(a)
    i += 1
  return config_file, overrides, rest


def parse(command: str, argv):
  """(flags, config, config file) for ``argv`` (``argv[0]`` is the program name)."""
  from absl import flags
  config_file, overrides, rest = split_args(list(argv[1:]))
  fv = flags.FlagValues()
  define_flags(fv)
  try:
    fv([argv[0]] + rest)
  except flags.Error as e:
    raise ConfigError(flag_error(e, fv, command)) from e
  given = [name for name in fv if fv[name].present]
  wrong = [name for name in given if name not in VERBS[command][1]]
  if wrong:
    raise ConfigError(f"--{wrong[0]} is not a flag of `{command}`; its flags: "
                      + ", ".join(f"--{f}" for f in VERBS[command][1]))
  if fv.run:
    if config_file is not None:
      raise ConfigError("give --run DIR or --config FILE, not both: --run reads the run's own "
                        "config (change a key with --config.KEY=VALUE)")
    base = config_io.run_config(fv.run, fv.step)
  elif config_file is not None:
    base = config_io.load_file(config_file)
  else:
    base = config_io.default_config()
  for key in config_io.override_keys(overrides):
    config_io.check_key(base, key)
  config = apply_overrides(base, overrides, argv[0])
  config_io.check_types(config, config_io.override_keys(overrides), base)
  keys = config_io.flat_keys(config)
  for key in fv.allow_changed:
    if key != "all" and key not in keys:
      config_io.check_key(config, key, "--allow_changed key")
  return fv, config, config_file


def apply_overrides(base, overrides, prog):
  """``base`` with the --config.KEY=VALUE overrides, each value parsed as ml_collections' config
  flags parse it (by the type the key holds)."""
  from absl import flags
  from ml_collections import config_flags
  if not overrides:
    return base
  fv = flags.FlagValues()
  # A copy: the flag sets the overrides on the ConfigDict it is given.
  config_flags.DEFINE_config_dict("config", copy.deepcopy(base), "config", flag_values=fv,
                                  lock_config=True,
                                  sys_argv=[prog] + overrides)
  try:
    fv([prog] + overrides)
  except flags.Error as e:
    raise ConfigError(value_error(e, base)) from e
  return fv.config


def value_error(e, base) -> str:
  """``flag --config.seed=1.5: invalid literal ...`` -> which key wants which type."""
  text = " ".join(str(e).split())
  m = re.match(r"^flag --config\.([^=]+)=(.*?): (.*)$", text)
  if not m:
    return text
  key, value, why = m.groups()
  current = config_io.flat_keys(base).get(key)
  if isinstance(current, bool):
    why = "expected True or False"
  return (f"bad value {value!r} for config key {key!r} (type {type(current).__name__}, here "
          f"{current!r}): {why}")


def flag_error(e, fv, command: str) -> str:
  text = str(e).splitlines()[0]
  m = re.search(r"Unknown command line flag '([^']+)'", text)
  if m:
    near = config_io.nearest(m.group(1), VERBS[command][1])
    return (f"unknown flag --{m.group(1)} for `{command}`"
            + (f"; nearest: {', '.join('--' + n for n in near)}" if near else "")
            + f" (prompt-tuning {command} --help lists them)")
  return text


# ------------------------------------------------------------------------------ help
def general_help() -> str:
  verbs = "\n".join(f"  {v:7s} {text}" for v, (text, _) in VERBS.items())
  return (f"usage: prompt-tuning VERB [--config FILE | --run DIR] [--config.KEY=VALUE ...] "
          f"[flags]\n\nverbs:\n{verbs}\n\n{RUN_HELP}\n\n"
          f"prompt-tuning VERB --help lists a verb's flags and every config key with its default "
          f"and meaning.")


def verb_help(command: str, config_file=None) -> str:
  from absl import flags
  text, names = VERBS[command]
  fv = flags.FlagValues()
  define_flags(fv)
  lines = [f"usage: prompt-tuning {command} [--config FILE"
           + (" | --run DIR" if "run" in names else "") + "] [--config.KEY=VALUE ...] [flags]",
           "", text, ""]
  if command == "sweep":
    lines += [SWEEP_HELP, ""]
  lines += [RUN_HELP, "", "flags:"]
  for name in names:
    default = fv[name].default
    shown = "" if default in (None, "", [], False) else f" (default {default!r})"
    lines.append(f"  --{name}{shown}\n      {fv[name].help}")
  config = config_io.load_file(config_file) if config_file else config_io.default_config()
  lines += ["", f"config keys (--config.KEY=VALUE), with their "
            f"{'values in ' + config_file if config_file else 'defaults'}:",
            config_io.describe_keys(config)]
  return "\n".join(lines)


HELP = ("-h", "--help", "-help", "--helpfull")


# ------------------------------------------------------------------------------ running
def error_line(e: BaseException) -> str:
  """The exception's own message on one line, nothing stripped from it."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  if isinstance(e, OSError) and e.errno is not None:
    text = str(e)  # "[Errno 2] No such file or directory: 'x'"; args[0] alone is the number
  else:
    text = str(e.args[0]) if e.args else str(e)
  return " ".join(line.strip() for line in text.splitlines() if line.strip())


def execute(command: str, argv) -> int:
  """Runs one verb with flags ``argv`` (``argv[0]`` is the program name); returns the exit
  status. The result is printed as JSON on stdout (a sweep prints its table)."""
  from prompt_tuning.run import loop, stop
  argv = list(argv)
  try:
    if command not in VERBS:
      raise ConfigError(f"unknown command {command!r}; use one of {', '.join(VERBS)}")
    if any(a in HELP for a in argv[1:]):
      config_file, _, _ = split_args(argv[1:])
      print(verb_help(command, config_file))
      return 0
    fv, config, config_file = parse(command, argv)
    result = dispatch(command, fv, config, config_file)
    if result is not None:
      print(json.dumps(result, indent=1, sort_keys=True), flush=True)
    if command == "train":
      print(train_summary(result, config), file=sys.stderr, flush=True)
  except stop.Preempted as e:
    print(e, file=sys.stderr, flush=True)
    return stop.EXIT_PREEMPTED
  except ConfigError as e:
    print(f"error: {error_line(e)}", file=sys.stderr)
    return 2
  except BrokenPipeError:   # `... --help | head`, `eval ... | true`: the reader has gone
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no error at exit's flush
    return 0
  except (ValueError, KeyError, OSError, ImportError, loop.TrainingError) as e:
    print(f"error: {type(e).__name__}: {error_line(e)}", file=sys.stderr)
    return 2
  return 0


def dispatch(command: str, fv, config, config_file):
  """The verb's result (JSON data), or None when it printed its own output."""
  from prompt_tuning.run import evaluate, infer, loop, sweep
  if command == "config":
    print(config_io.describe_keys(config, comments={}, defaults=config_io.default_config()))
    return None
  if command == "train":
    return dict(loop.train(config, fv.allow_changed), output_dir=config.output_dir)
  if command == "eval":
    return evaluate.evaluate(config, fv.step, fv.allow_changed)
  if command == "sweep":
    if not config_file:
      raise ConfigError("sweep needs --config FILE with a get_sweep() (prompt-tuning sweep "
                        "--help)")
    res = sweep.sweep(config, sweep.load_sweep(config_file), fv.metric or None)
    print(res["table"])
    return None
  if command == "infer":
    if fv.input_file:
      if fv.input or fv.prompt_run:
        raise ConfigError("give --input_file or --input / --prompt_run, not both")
      return infer.infer_file(config, fv.input_file, fv.output_file, fv.step, fv.allow_changed)
    if fv.prompt_run:  # mixed-task batch: --prompt_run TASK=DIR, --input TASK::TEXT
      bad = [r for r in fv.prompt_run if "=" not in r]
      if bad:
        raise ConfigError(f"--prompt_run takes TASK=RUN_DIR; got {bad[0]!r}")
      runs = dict(r.split("=", 1) for r in fv.prompt_run)
      pairs = []
      for text in fv.input:
        if "::" not in text:
          raise ConfigError(f"with --prompt_run, inputs are TASK::TEXT; got {text!r}")
        pairs.append(tuple(text.split("::", 1)))
      return {"outputs": infer.infer_mixed(config, runs, pairs, fv.step)}
    return infer.infer(config, fv.input, fv.step, fv.allow_changed, fv.rank)
  from prompt_tuning.run import export
  return export.export(config, fv.out, fv.format, fv.step, fv.allow_changed)


def train_summary(result: dict, config) -> str:
  """Where the run is, its final and best metrics, and what to run next (a few lines)."""
  out = config.output_dir
  lines = [f"done: {out} at step {result['step']} ({result['trainable_params']:,} trainable "
           f"parameters)"]
  for task, m in result["eval"].items():
    shown = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k != "num_examples")
    lines.append(f"  final {task} ({m.get('num_examples', '?')} dev examples): {shown}")
  if "best" in result:
    lines.append(f"  best (lowest dev perplexity): step {result['best']['step']}, perplexity "
                 f"{result['best']['dev_perplexity']:.4g}, in {os.path.join(out, 'best')}")
  lines.append(f"  logs: {os.path.join(out, 'metrics.jsonl')}; tensorboard --logdir "
               f"{os.path.join(out, 'tensorboard')}")
  lines.append(f"  next: prompt-tuning eval --run {out}; prompt-tuning infer --run {out} "
               f"--input TEXT; prompt-tuning export --run {out} --format peft --out DIR")
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in HELP + ("help",):
    print(general_help(), file=sys.stdout if len(argv) >= 2 else sys.stderr)
    return 0 if len(argv) >= 2 else 2
  if argv[1] not in VERBS:
    near = config_io.nearest(argv[1], VERBS)
    print(f"error: unknown command {argv[1]!r}; use one of {', '.join(VERBS)}"
          + (f" (did you mean {near[0]}?)" if near else ""), file=sys.stderr)
    return 2
  from prompt_tuning.run import stop   # a signal ends the command at once, cleanly, except
  stop.exit_on_signal(argv[1])         # while a training run can stop with a checkpoint
  return execute(argv[1], [argv[0]] + argv[2:])


if __name__ == "__main__":
  sys.exit(main())
