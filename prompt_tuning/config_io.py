"""Configs as the command line reads them: a config file (``FILE`` or ``FILE:variant``), the
config a finished run stored, ``--config.KEY=VALUE`` overrides checked against the keys that
exist (the nearest ones suggested), and each key's comment read from the source that defines it
(default_config.py, the method modules) for ``--help``.

Every user mistake here raises :class:`ConfigError`: one line naming the file or key.
"""
from __future__ import annotations

import difflib
import importlib.util
import inspect
import itertools
import os
import re

import ml_collections

_LOADED = itertools.count()


class ConfigError(ValueError):
  """A config file or key the user gave is unusable (one line)."""


# ------------------------------------------------------------------------------ config files
def split_spec(spec: str) -> tuple[str, str | None]:
  """``FILE:variant`` -> (FILE, variant), as ml_collections' config flags read it."""
  if not os.path.exists(spec) and ":" in spec:
    path, variant = spec.rsplit(":", 1)
    return path, variant
  return spec, None


def load_module(path: str):
  """Executes a config file as a fresh module (a unique name each time: two files never share
  one cached module)."""
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"_prompt_tuning_config_{next(_LOADED)}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"config file {path!r} does not parse: {e.msg} (line {e.lineno})") from e
  except Exception as e:
    raise ConfigError(f"config file {path!r} failed to import: {type(e).__name__}: "
                      f"{one_line(e)}{_where(e, path)}") from e
  return module


def call(module, path: str, function: str, variant: str | None):
  """``module.function()`` (or ``function(variant)``) with any failure as one line."""
  fn = getattr(module, function, None)
  if not callable(fn):
    raise ConfigError(f"config file {path!r} defines no {function}()")
  try:
    return fn() if variant is None else fn(variant)
  except Exception as e:
    arg = "" if variant is None else repr(variant)
    raise ConfigError(f"config file {path!r}: {function}({arg}) raised {type(e).__name__}: "
                      f"{one_line(e)}{_where(e, path)}") from e


def load_file(spec: str):
  """The ConfigDict of ``get_config()`` in a config file; it must have every key of the default
  config (configs start from ``prompt_tuning.default_config.get_config()``)."""
  path, variant = split_spec(spec)
  config = call(load_module(path), path, "get_config", variant)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config file {path!r}: get_config() returned {type(config).__name__}, "
                      f"not an ml_collections.ConfigDict")
  missing = sorted(set(flat_keys(default_config())) - set(flat_keys(config)))
  if missing:
    raise ConfigError(f"config file {path!r} lacks config keys {', '.join(missing[:5])}"
                      f"{' ...' if len(missing) > 5 else ''}: start from "
                      f"prompt_tuning.default_config.get_config()")
  return config


def default_config():
  from prompt_tuning.default_config import get_config
  return get_config()


def one_line(e: BaseException) -> str:
  text = str(e.args[0]) if len(e.args) == 1 else str(e)
  return " ".join(text.split()) or type(e).__name__


def _where(e: BaseException, path: str) -> str:
  """`` (line N)`` of the innermost traceback frame in the config file itself."""
  lines = [tb.tb_lineno for tb in _frames(e.__traceback__)
           if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path)]
  return f" (line {lines[-1]})" if lines else ""


def _frames(tb):
  while tb is not None:
    yield tb
    tb = tb.tb_next


# ------------------------------------------------------------------------------ keys
def flat_keys(config, prefix: str = "") -> dict[str, object]:
  """{"model.dtype": value, ...} for every leaf key."""
  out = {}
  for k, v in config.items():
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out.update(flat_keys(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def nearest(key: str, keys, n: int = 3) -> list[str]:
  """The existing keys nearest to ``key``: by whole key, and by the last part (a key put in the
  wrong section)."""
  keys = sorted(keys)
  last = key.rsplit(".", 1)[-1]
  initials = lambda k: "".join(w[0] for w in k.rsplit(".", 1)[-1].split("_") if w)
  abbreviated = [k for k in keys if len(last) > 1 and initials(k) == last]   # lr, bs
  close = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
  by_last = [k for k in keys if difflib.SequenceMatcher(None, last, k.rsplit(".", 1)[-1]).ratio()
             >= 0.8]
  return list(dict.fromkeys(abbreviated + close + by_last))[:n]


def _did_you_mean(key: str, keys) -> str:
  near = nearest(key, keys)
  return f"; nearest: {', '.join(near)}" if near else ""


def check_key(config, key: str, what: str = "config key"):
  """Raises ConfigError unless ``key`` ("train.num_steps") names a value of ``config``."""
  node, parts = config, key.split(".")
  for i, part in enumerate(parts):
    here = ".".join(parts[:i + 1])
    if not isinstance(node, (ml_collections.ConfigDict, dict)):
      parent = ".".join(parts[:i])
      raise ConfigError(f"unknown {what} {key!r}: {parent} is a value ({node!r}), not a "
                        f"section{_did_you_mean(key, flat_keys(config))}")
    if part not in node:
      raise ConfigError(f"unknown {what} {key!r}: no {here!r}"
                        f"{_did_you_mean(key, flat_keys(config))}")
    node = node[part]
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    raise ConfigError(f"{what} {key!r} is a section, not a value; its keys: "
                      f"{', '.join(sorted(flat_keys(node, key + '.'))[:8])}")


def get(config, key: str):
  for part in key.split("."):
    config = config[part]
  return config


def check_types(config, keys, reference):
  """Tuple values parse to tuples of anything: each element must have the type the key's
  elements have in ``reference`` (strings for an empty tuple), and a string element with a comma
  is a list written without brackets."""
  for key in keys:
    new, old = get(config, key), get(reference, key)
    if not isinstance(old, tuple) or not isinstance(new, tuple):
      continue
    want = {type(x) for x in old} or {str}
    names = " or ".join(sorted(t.__name__ for t in want))
    for x in new:
      if type(x) not in want and not (float in want and type(x) is int):
        raise ConfigError(f"bad value for config key {key!r}: {x!r} in {new!r} is not a "
                          f"{names} (the key holds a tuple of {names}s)")
      if isinstance(x, str) and "," in x:
        raise ConfigError(f"bad value for config key {key!r}: {x!r} has a comma; write a "
                          f"tuple as --config.{key}=\"('a', 'b')\"")


def override_keys(argv) -> list[str]:
  """The keys of ``--config.KEY=VALUE`` / ``--config.KEY VALUE`` arguments."""
  keys = []
  for a in argv:
    m = re.match(r"^--?config\.([^=]+)", a)
    if m:
      keys.append(m.group(1))
  return keys


# ------------------------------------------------------------------------------ stored runs
def from_stored(stored: dict, base=None):
  """A ConfigDict of a run's stored config (JSON data) on top of the default config: keys added
  since the run keep their defaults (check_drift treats those as no change), lists become tuples
  where the default is a tuple, and keys this version does not know are kept as stored."""
  config = default_config() if base is None else base
  config.unlock()
  _merge(config, stored)
  config.lock()
  return config


def _merge(node, stored: dict):
  for k, v in stored.items():
    if k in node and isinstance(node[k], ml_collections.ConfigDict) and isinstance(v, dict):
      _merge(node[k], v)
    elif k in node and isinstance(node[k], tuple) and isinstance(v, list):
      node[k] = tuple(v)
    elif k in node and node[k] is not None and v is not None and type(node[k]) is not type(v) \
        and isinstance(node[k], (int, float)) and isinstance(v, (int, float)):
      node[k] = type(node[k])(v)   # JSON keeps 1.0 as 1.0 but a stored int field as int
    else:
      if k in node:
        node[k] = v
      else:
        node[k] = ml_collections.ConfigDict(v) if isinstance(v, dict) else v


def run_config(run_dir: str, step: int | None = None):
  """The config the run in ``run_dir`` was made with (its checkpoint at ``step``, default the
  latest), with ``output_dir`` = ``run_dir`` (runs may move)."""
  from prompt_tuning import checkpoint as ckpt_lib
  if not os.path.isdir(run_dir):
    raise ConfigError(f"--run {run_dir!r} is not a directory")
  ckpt = ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"))
  try:
    stored = ckpt.read_meta(step).get("config")
  finally:
    ckpt.close()
  if not stored:
    raise ConfigError(f"the checkpoint in {run_dir!r} records no config; give the run's flags "
                      f"with --config.output_dir={run_dir} instead of --run")
  config = from_stored(stored)
  config.unlock()
  config.output_dir = run_dir
  config.lock()
  return config


# ------------------------------------------------------------------------------ help text
def key_comments() -> dict[str, str]:
  """{"model.dtype": "compute dtype", "method.lora.rank": ..., "method": <section comment>}:
  the comments next to each key in default_config.py and in each method's Config dataclass."""
  from prompt_tuning import default_config, methods
  out = _comments(inspect.getsource(default_config).splitlines())
  for name, method in methods.REGISTRY.items():
    try:
      lines = inspect.getsource(method.Config).splitlines()
    except (OSError, TypeError):   # a method defined where its source is not readable
      continue
    out.update({f"method.{name}.{k}": v for k, v in _comments(lines, fields=True).items()})
  return out


_SECTION = re.compile(r"^\s*c\.(\w+)\s*=\s*ml_collections\.ConfigDict\(")
_TOP = re.compile(r"^\s*c\.(\w+)\s*=(?!=)")          # ``c.seed = 0``
_FIELD = re.compile(r"^\s*(\w+)\s*:\s*[^=#]+=")       # dataclass field: ``name: type = value``
_KWARG = re.compile(r"(?:^|[(,\s])(\w+)=(?!=)")         # ``name=value`` inside dict(...)


def _comments(lines, fields: bool = False) -> dict[str, str]:
  out: dict[str, str] = {}
  section, above, keys, indent = "", [], [], None
  for line in lines:
    code, _, comment = line.partition("#")
    comment = comment.strip()
    if not code.strip():   # a comment-only line: continues the previous key's, or a block above
      if comment and keys and indent is not None and line.index("#") >= indent:
        for k in keys:
          out[k] = f"{out[k]} {comment}".strip()
      elif comment:
        above.append(comment)
        keys = []
      continue
    found, prefix = [], f"{section}." if section else ""
    if fields:
      m = _FIELD.match(code)
      found = [m.group(1)] if m else []
    elif _SECTION.match(code):
      section = _SECTION.match(code).group(1)
      if above:
        out[section] = " ".join(above)
      found = [k for k in _KWARG.findall(code[code.index("(") + 1:]) if k != "dict"]
      prefix = f"{section}."
    elif _TOP.match(code):
      section = ""
      found, prefix = [_TOP.match(code).group(1)], ""
    elif section:
      found = [k for k in _KWARG.findall(code) if k != "dict"]
    keys = [prefix + k for k in found]
    if comment:
      indent = line.index("#")
    elif above and not _SECTION.match(code):   # a comment block above keys without their own
      comment, indent = " ".join(above), None
    above = []
    for k in keys:
      out[k] = comment
  return {k: v for k, v in out.items() if v}


def describe_keys(config, comments: dict[str, str] | None = None, defaults=None) -> str:
  """Every key of ``config`` by section: ``key = value`` and its comment (and, with
  ``defaults``, the default where the value differs from it)."""
  comments = key_comments() if comments is None else comments
  flat = flat_keys(config)
  base = flat_keys(defaults) if defaults is not None else {}
  lines, last = [], None
  # Top-level keys first, then each section (ConfigDict lists keys sorted).
  for key, value in sorted(flat.items(), key=lambda kv: ("." in kv[0], kv[0])):
    section = key.split(".")[0] if "." in key else ""
    if section != last:
      lines.append(f"\n[{section or 'top level'}]")
      if comments.get(section):
        lines.append(f"  # {comments[section]}")
      last = section
    text = f"  {key} = {value!r}"
    if defaults is not None and key in base and base[key] != value:
      text += f"   (default {base[key]!r})"
    elif defaults is not None and key not in base:
      text += "   (not a key of the default config)"
    lines.append(text)
    if comments.get(key):
      lines.append(f"      {comments[key]}")
  return "\n".join(lines).lstrip("\n")
