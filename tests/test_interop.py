"""Hugging Face and PEFT artifacts in and out (prompt_tuning/interop, `prompt-tuning export`):
tiny random transformers models in tmp directories, PEFT loading our exports with equal logits
(float32, 1e-4), merged checkpoints, prompt files, PEFT adapters / prompt files as a run's
initial state, Hub ids through a fake local cache, and the checkpoint's own tokenizer."""
import json
import os
import shutil
import sys
from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from flax import nnx  # noqa: E402

from prompt_tuning import cli, interop, methods, models  # noqa: E402
from prompt_tuning.data import vocab as vocab_lib  # noqa: E402
from prompt_tuning.interop import hub, prompt_files  # noqa: E402
from prompt_tuning.interop import tokenizer as tok_lib  # noqa: E402
from prompt_tuning.methods import lora as lora_lib  # noqa: E402
from prompt_tuning.models import core  # noqa: E402

T = transformers
ATOL = 1e-4
# Special ids of the bundled tiny vocabulary (pad 0, eos 1), so runs can train on these models.
IDS = dict(pad_token_id=0, eos_token_id=1)
CASES = {
    "t5": (T.T5ForConditionalGeneration, T.T5Config(
        vocab_size=256, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
        dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        decoder_start_token_id=0, **IDS)),
    "bart": (T.BartForConditionalGeneration, T.BartConfig(
        vocab_size=256, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=40, decoder_ffn_dim=40,
        max_position_embeddings=128, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        init_std=0.1, decoder_start_token_id=0, forced_eos_token_id=None, bos_token_id=2, **IDS)),
    "gpt2": (T.GPT2LMHeadModel, T.GPT2Config(
        vocab_size=256, n_positions=128, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.1, bos_token_id=1, **IDS)),
    "llama": (T.LlamaForCausalLM, T.LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.1, tie_word_embeddings=False, bos_token_id=2, **IDS)),
}
SEQ2SEQ = ("t5", "bart")


def make_hf(name, path):
  cls, config = CASES[name]
  torch.manual_seed(sum(map(ord, name)))
  m = cls(config).eval()
  with torch.no_grad():  # non-trivial norms and biases (default init leaves them 1 / 0)
    for n, p in m.named_parameters():
      if "norm" in n or "ln_" in n or n.endswith("bias") or "layernorm" in n:
        p.add_(torch.randn_like(p) * 0.2)
  m.save_pretrained(path)
  return m


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  out = {}
  for name in CASES:
    make_hf(name, str(root / name))
    out[name] = str(root / name)
  return out


def batch(seed=0, b=2, s=9, t=5):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, 250, size=(b, s))
  mask = np.ones((b, s), np.int64)
  mask[1, 6:] = 0   # a right-padded row
  ids[1, 6:] = 0
  dec = rng.randint(3, 250, size=(b, t))
  dec[:, 0] = 0     # decoder start
  return ids, mask, dec


def torch_logits(model, name, ids, mask, dec):
  with torch.no_grad():
    kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if name in SEQ2SEQ:
      kw["decoder_input_ids"] = torch.tensor(dec)
    return model(**kw).logits.numpy()


def our_logits(model, ids, mask, dec):
  if model.cfg.is_encoder_decoder:
    return np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec)))
  return np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))


def assert_close(name, got, ref, mask):
  if name in SEQ2SEQ:
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
  else:   # a decoder-only model's padded positions predict nothing
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], ref[valid], atol=ATOL, rtol=0)


def randomize(model, kind, scale, seed=1):
  """Simulated training: the method's variables (``kind``) get random values."""
  rng = np.random.RandomState(seed)
  for _, v in nnx.to_flat_state(nnx.state(model, kind)):
    v.set_value(jnp.asarray(rng.normal(size=v.shape).astype(np.float32) * scale))


def lora_model(path, seed=1, **opts):
  model = models.load(path)
  cfg = methods.make("lora", **dict(dict(rank=2, alpha=6.0), **opts))
  methods.attach(model, cfg)
  randomize(model, lora_lib.LoRAParam, 0.2, seed)
  return model, cfg


def prompt_model(path, length=3, seed=2):
  model = models.load(path)
  cfg = methods.make("prompt", length=length)
  methods.attach(model, cfg)
  randomize(model, core.PromptParam, 0.5, seed)
  return model, cfg


# ----------------------------------------------------------------------------- PEFT LoRA
@pytest.mark.parametrize("name,targets", [
    ("t5", ("q", "k", "v", "o", "mlp")), ("bart", ("q", "k", "v", "o", "mlp")),
    ("gpt2", ("q", "k", "v", "o", "mlp")), ("gpt2", ("q", "v", "o")),
    ("llama", ("q", "k", "v", "o", "mlp")), ("llama", ("k", "mlp"))])
def test_peft_lora_export_gives_equal_logits(hf_dirs, tmp_path, name, targets):
  path = hf_dirs[name]
  model, cfg = lora_model(path, targets=targets)
  out = str(tmp_path / "adapter")
  interop.export_peft(model, cfg, out, base_model=path)
  config = json.load(open(os.path.join(out, "adapter_config.json")))
  assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 6
  base = CASES[name][0].from_pretrained(path).eval()
  ids, mask, dec = batch()
  plain = torch_logits(base, name, ids, mask, dec)
  pm = peft.PeftModel.from_pretrained(base, out).eval()
  ref = torch_logits(pm, name, ids, mask, dec)
  got = our_logits(model, ids, mask, dec)
  assert_close(name, got, ref, mask)
  assert np.abs(ref - plain).max() > 1e-2   # the adapter changes the logits: not vacuous
  if name == "gpt2":   # fused q/k/v: one c_attn LoRA of rank 2 * (number of q/k/v targeted)
    n = len({"q", "k", "v"} & set(targets))
    assert config["rank_pattern"] == ({"c_attn": 2 * n} if n > 1 else {})
    assert config["alpha_pattern"] == ({"c_attn": 6 * n} if n > 1 else {})
    lora_a = [m for k, m in pm.named_modules() if k.endswith("h.0.attn.c_attn.lora_A.default")]
    assert lora_a[0].weight.shape == (2 * n, 32)
    if "mlp" not in targets:   # only the attention's c_proj: a two-part suffix
      assert "attn.c_proj" in config["target_modules"]
      assert not any(k.endswith("mlp.c_proj.lora_A.default") for k, _ in pm.named_modules())


@pytest.mark.parametrize("name", ["t5", "bart", "gpt2", "llama"])
def test_merged_hf_export_gives_equal_logits(hf_dirs, tmp_path, name):
  path = hf_dirs[name]
  model, cfg = lora_model(path)
  out = str(tmp_path / "merged")
  files = interop.export_merged(model, out)
  assert {os.path.basename(f) for f in files} >= {"config.json", "model.safetensors"}
  ids, mask, dec = batch(1)
  merged = getattr(T, "AutoModelForSeq2SeqLM" if name in SEQ2SEQ else "AutoModelForCausalLM")
  ref = torch_logits(merged.from_pretrained(out).eval(), name, ids, mask, dec)
  assert_close(name, our_logits(model, ids, mask, dec), ref, mask)
  # And it loads back here strictly, as a plain model with the same logits.
  assert_close(name, our_logits(models.load(out), ids, mask, dec), ref, mask)


def test_merged_export_of_full_and_layers_tuning(hf_dirs, tmp_path):
  path = hf_dirs["bart"]
  for method, opts in (("full", {}), ("layers", {"paths": ("decoder.layers.1",)})):
    model = models.load(path)
    cfg = methods.make(method, **opts)
    methods.attach(model, cfg)
    params = nnx.state(model, methods.get(method).trainable(model, cfg))
    rng = np.random.RandomState(3)
    for _, v in nnx.to_flat_state(params):
      v.set_value(v[...] + jnp.asarray(rng.normal(size=v.shape).astype(np.float32) * 0.05))
    out = str(tmp_path / method)
    interop.export_merged(model, out)
    ids, mask, dec = batch(2)
    ref = torch_logits(T.AutoModelForSeq2SeqLM.from_pretrained(out).eval(), "bart", ids, mask, dec)
    assert_close("bart", our_logits(model, ids, mask, dec), ref, mask)
    with pytest.raises(ValueError, match="has no PEFT adapter form"):
      interop.export_peft(model, cfg, str(tmp_path / "no"))


def test_merged_export_refuses_a_soft_prompt(hf_dirs, tmp_path):
  model, _ = prompt_model(hf_dirs["t5"])
  with pytest.raises(ValueError, match="soft prompt cannot be merged"):
    interop.export_merged(model, str(tmp_path / "x"))


# ----------------------------------------------------------------------------- PEFT prompts
@pytest.mark.parametrize("name", ["t5", "bart", "gpt2", "llama"])
def test_peft_prompt_export_gives_equal_logits(hf_dirs, tmp_path, name):
  path = hf_dirs[name]
  model, cfg = prompt_model(path, length=4)
  out = str(tmp_path / "adapter")
  interop.export_peft(model, cfg, out, base_model=path)
  config = json.load(open(os.path.join(out, "adapter_config.json")))
  assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 4
  assert config["num_transformer_submodules"] == 1 and config["token_dim"] == 32
  pm = peft.PeftModel.from_pretrained(CASES[name][0].from_pretrained(path).eval(), out).eval()
  ids, mask, dec = batch(3)
  ref = torch_logits(pm, name, ids, mask, dec)
  if name not in SEQ2SEQ:   # PEFT's causal LM returns logits for the virtual tokens too
    assert ref.shape[1] == 4 + ids.shape[1]
    ref = ref[:, 4:]
  assert_close(name, our_logits(model, ids, mask, dec), ref, mask)


@pytest.mark.parametrize("name", ["t5", "gpt2"])
def test_adapters_made_by_peft_load_as_initial_state(hf_dirs, tmp_path, name):
  """PEFT's own files: a seq2seq prompt with PEFT's default num_transformer_submodules=2 (only
  its first rows are used by PEFT's prompt tuning), and a GPT-2 LoRA of rank r on the fused
  c_attn (every part of q/k/v shares A)."""
  path = hf_dirs[name]
  cls = CASES[name][0]
  task = "SEQ_2_SEQ_LM" if name in SEQ2SEQ else "CAUSAL_LM"
  ids, mask, dec = batch(4)
  for kind in ("prompt", "lora"):
    torch.manual_seed(5)
    if kind == "prompt":
      pc = peft.PromptTuningConfig(task_type=task, num_virtual_tokens=3)
    else:
      pc = peft.LoraConfig(task_type=task, r=2, lora_alpha=4, lora_dropout=0.0,
                           target_modules=["c_attn", "c_proj", "c_fc"] if name == "gpt2" else
                           ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
                           fan_in_fan_out=name == "gpt2")
    pm = peft.get_peft_model(cls.from_pretrained(path).eval(), pc).eval()
    with torch.no_grad():   # as if trained: LoRA B is zero at init
      for n, p in pm.named_parameters():
        if "lora_B" in n or "prompt" in n:
          p.copy_(torch.randn_like(p) * 0.2)
    out = str(tmp_path / kind)
    pm.save_pretrained(out)
    if kind == "prompt":
      assert json.load(open(os.path.join(out, "adapter_config.json"))).get(
          "num_transformer_submodules") == (2 if name in SEQ2SEQ else 1)
    ref = torch_logits(pm, name, ids, mask, dec)
    if kind == "prompt" and name not in SEQ2SEQ:
      ref = ref[:, 3:]
    model = models.load(path)
    cfg = methods.make("prompt", length=3) if kind == "prompt" else \
        methods.make("lora", rank=2, alpha=16.0)   # another alpha: folded into B exactly
    methods.attach(model, cfg)
    interop.init_from(model, cfg, out)
    assert_close(name, our_logits(model, ids, mask, dec), ref, mask)


# ----------------------------------------------------------------------------- the way back
@pytest.mark.parametrize("name", ["bart", "gpt2", "llama"])
def test_lora_adapter_round_trip(hf_dirs, tmp_path, name):
  model, cfg = lora_model(hf_dirs[name], targets=("q", "v", "mlp"))
  out = str(tmp_path / "adapter")
  interop.export_peft(model, cfg, out)
  fresh = models.load(hf_dirs[name])
  methods.attach(fresh, cfg.replace(seed=7))
  interop.init_from(fresh, cfg, out)
  want = dict(nnx.to_flat_state(nnx.state(model, lora_lib.LoRAParam)))
  got = dict(nnx.to_flat_state(nnx.state(fresh, lora_lib.LoRAParam)))
  assert set(want) == set(got)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k][...]), np.asarray(want[k][...]), atol=1e-6,
                               err_msg=str(k))


def test_lora_adapter_that_does_not_fit_is_refused(hf_dirs, tmp_path):
  path = hf_dirs["llama"]
  model, cfg = lora_model(path, targets=("q", "v"))
  out = str(tmp_path / "adapter")
  interop.export_peft(model, cfg, out)

  def load(**opts):
    m = models.load(path)
    c = methods.make("lora", **dict(dict(rank=2, alpha=6.0, targets=("q", "v")), **opts))
    methods.attach(m, c)
    interop.init_from(m, c, out)

  load()
  with pytest.raises(ValueError, match=r"differ from this run's lora targets: only in the "
                                       r"adapter \[\] \(0\), only in the run .*k_proj.* \(2\)"):
    load(targets=("q", "k", "v"))
  with pytest.raises(ValueError, match="has LoRA rank 2; this run's lora rank needs 4"):
    load(rank=4)
  m = models.load(path)
  pc = methods.make("prompt", length=3)
  methods.attach(m, pc)
  with pytest.raises(ValueError, match="is a LORA adapter; method 'prompt' takes PROMPT_TUNING"):
    interop.init_from(m, pc, out)
  # A GPT-2 c_attn LoRA that changes k cannot start a run that targets q and v only.
  g, gc = lora_model(hf_dirs["gpt2"], targets=("q", "k", "v"))
  interop.export_peft(g, gc, str(tmp_path / "g"))
  m = models.load(hf_dirs["gpt2"])
  c = methods.make("lora", rank=2, alpha=6.0, targets=("q", "v"))
  methods.attach(m, c)
  with pytest.raises(ValueError, match=r"c_attn changes part 1 \(decoder.layers.0.attn.k\)"):
    interop.init_from(m, c, str(tmp_path / "g"))


def test_peft_prompt_that_does_not_fit_is_refused(hf_dirs, tmp_path):
  model, cfg = prompt_model(hf_dirs["t5"], length=4)
  out = str(tmp_path / "adapter")
  interop.export_peft(model, cfg, out)
  m = models.load(hf_dirs["t5"])
  c = methods.make("prompt", length=5)
  methods.attach(m, c)
  with pytest.raises(ValueError, match=r"shape \(4, 32\) but this run needs \[5, 32\] "
                                       r"\(prompt length differs\)"):
    interop.init_from(m, c, out)
  g = models.load(hf_dirs["gpt2"])
  methods.attach(g, methods.make("prompt", length=4))
  with pytest.raises(ValueError, match="task_type 'SEQ_2_SEQ_LM' does not fit this decoder_only"):
    interop.init_from(g, methods.make("prompt", length=4), out)


# ----------------------------------------------------------------------------- prompt files
def test_prompt_file_round_trip(hf_dirs, tmp_path):
  model, cfg = prompt_model(hf_dirs["gpt2"], length=5)
  out = str(tmp_path / "prompt")
  files = interop.export_prompt(model, out, {"base_model": {"hf_checkpoint": "x"}, "step": 7})
  assert sorted(os.path.basename(f) for f in files) == ["prompt.json", "prompt.npy",
                                                        "prompt.safetensors"]
  want = np.asarray(model.prompt[...])
  info = json.load(open(os.path.join(out, "prompt.json")))
  assert info["length"] == 5 and info["d_model"] == 32 and info["dtype"] == "float32"
  assert info["base_model"] == {"hf_checkpoint": "x"} and info["family"] == "gpt2"
  from safetensors.numpy import load_file
  assert list(load_file(os.path.join(out, "prompt.safetensors"))) == ["prompt"]
  for src in (out, os.path.join(out, "prompt.npy"), os.path.join(out, "prompt.safetensors")):
    value, meta = prompt_files.load_prompt(src)
    assert value.dtype == np.float32 and value.shape == (5, 32)
    np.testing.assert_array_equal(value, want)
    if not src.endswith(".npy"):
      assert meta["step"] == 7 and meta["base_model"] == {"hf_checkpoint": "x"}
    m = models.load(hf_dirs["gpt2"])
    methods.attach(m, cfg.replace(seed=3))
    interop.init_from(m, cfg, src)
    np.testing.assert_array_equal(np.asarray(m.prompt[...]), want)
  np.save(tmp_path / "wide.npy", np.zeros((5, 16), np.float32))
  with pytest.raises(ValueError, match=r"needs \[5, 32\] \(prompt d_model differs\)"):
    interop.init_from(m, cfg, str(tmp_path / "wide.npy"))
  lora = models.load(hf_dirs["gpt2"])
  lc = methods.make("lora")
  methods.attach(lora, lc)
  with pytest.raises(ValueError, match="is a prompt file: method .lora. cannot start from a prompt file"):
    interop.init_from(lora, lc, out)
  with pytest.raises(FileNotFoundError, match="method.init_from '/no/such' does not exist"):
    interop.init_from(lora, lc, "/no/such")


# ----------------------------------------------------------------------------- Hub ids
def fake_cache(root, repo, src, sha="0123456789abcdef0123456789abcdef01234567"):
  base = os.path.join(root, "models--" + repo.replace("/", "--"))
  shutil.copytree(src, os.path.join(base, "snapshots", sha))
  os.makedirs(os.path.join(base, "refs"))
  with open(os.path.join(base, "refs", "main"), "w") as f:
    f.write(sha)
  return sha


@pytest.mark.parametrize("impl", ["huggingface_hub", "own_lookup"])
def test_hub_id_through_a_fake_local_cache(hf_dirs, tmp_path, monkeypatch, impl):
  if impl == "own_lookup":   # the lookup used when huggingface_hub is not installed
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
  for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
  sha = fake_cache(str(tmp_path / "home" / "hub"), "org/tiny-t5", hf_dirs["t5"])
  monkeypatch.chdir(tmp_path)   # no relative directory of that name
  ids, mask, dec = batch()
  want = our_logits(models.load(hf_dirs["t5"]), ids, mask, dec)
  for ref in ("org/tiny-t5", "org/tiny-t5@main", f"org/tiny-t5@{sha}"):
    np.testing.assert_array_equal(our_logits(models.load(ref), ids, mask, dec), want)
  # HF_HUB_CACHE wins over HF_HOME.
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache2"))
  fake_cache(str(tmp_path / "cache2"), "gpt2-tiny", hf_dirs["gpt2"])
  assert models.load("gpt2-tiny").cfg.family == "gpt2"
  with pytest.raises(FileNotFoundError) as e:
    models.load("org/tiny-t5")
  msg = str(e.value)
  assert "'org/tiny-t5' is not in the local Hugging Face cache" in msg
  assert str(tmp_path / "cache2") in msg and "never downloads" in msg
  with pytest.raises(FileNotFoundError, match="at revision 'v2'"):
    models.load("gpt2-tiny@v2")
  # Paths are never ids: the usual error.
  with pytest.raises(FileNotFoundError, match="checkpoint path '/no/such/dir' does not exist"):
    models.load("/no/such/dir")
  assert hub.reference("gpt2-tiny") == "gpt2-tiny"
  assert hub.reference(hf_dirs["t5"]) == os.path.abspath(hf_dirs["t5"])


# ----------------------------------------------------------------------------- tokenizers
CORPUS = vocab_lib.BUNDLED_CORPUS


def bpe_tokenizer(directory, specials, template=None, declare=None, vocab_size=250):
  """A tiny byte-level BPE tokenizer.json (+ tokenizer_config.json declaring ``declare``)."""
  from tokenizers import Tokenizer, decoders, models as tm, pre_tokenizers, processors, trainers
  tok = Tokenizer(tm.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  with open(CORPUS) as f:
    tok.train_from_iterator([line.strip() for line in f if line.strip()], trainer)
  if template:
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(s, specials.index(s)) for s in specials
                                         if s in template])
  else:
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  config = dict(declare or {}, tokenizer_class="PreTrainedTokenizerFast")
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)
  return tok


def _run_config(**over):
  from prompt_tuning.default_config import get_config
  c = get_config()
  for key, value in over.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def test_checkpoint_tokenizers_are_picked_and_checked(hf_dirs, tmp_path):
  # T5: a SentencePiece spiece.model next to the weights.
  t5 = str(tmp_path / "t5")
  shutil.copytree(hf_dirs["t5"], t5)
  with open(CORPUS) as f:
    vocab_lib.train_sentencepiece([l.strip() for l in f if l.strip()], t5, 200)
  v = tok_lib.run_vocab(_run_config(**{"model.hf_checkpoint": t5}))
  assert isinstance(v, vocab_lib.SentencePieceVocab) and v.path == os.path.join(t5, "spiece.model")
  hf_tok = T.AutoTokenizer.from_pretrained(t5)
  text = "the teacher found a good box"
  assert v.encode(text) + [v.eos_id] == hf_tok(text).input_ids

  # GPT-2: byte-level BPE with <|endoftext|> only: no pad token, so it pads with the model's pad.
  g = str(tmp_path / "gpt2")
  gtok = bpe_tokenizer(g, ["<|endoftext|>"])
  eot = gtok.token_to_id("<|endoftext|>")
  make_gpt2 = lambda pad: CASES["gpt2"][0](T.GPT2Config(
      vocab_size=256, n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=eot,
      eos_token_id=eot, pad_token_id=pad)).save_pretrained(g)
  make_gpt2(None)   # GPT-2's config has no pad: ours pads with EOS
  v = tok_lib.run_vocab(_run_config(**{"model.hf_checkpoint": g}))
  assert isinstance(v, vocab_lib.HFTokenizerVocab) and v.eos_id == v.pad_id == eot
  assert not v.has_pad and v.encode(text) == T.AutoTokenizer.from_pretrained(g)(text).input_ids

  # Llama: BPE whose post-processor adds BOS; encode keeps it (what tokenizer(text) gives).
  ll = str(tmp_path / "llama")
  bpe_tokenizer(ll, ["<unk>", "<s>", "</s>"], "<s> $A",
                {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
  T.LlamaForCausalLM(T.LlamaConfig(
      vocab_size=256, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
      num_attention_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)).save_pretrained(ll)
  v = tok_lib.run_vocab(_run_config(**{"model.hf_checkpoint": ll}))
  ids = T.AutoTokenizer.from_pretrained(ll)(text).input_ids
  assert ids[0] == 1 and v.encode(text) == ids and (v.eos_id, v.pad_id, v.bos_id) == (2, 0, 1)
  assert v.decode(v.encode(text) + [2, 7]) == text

  # BART-style "<s> $A </s>": the trailing EOS is the data layer's, the leading <s> stays.
  b = str(tmp_path / "bart")
  bpe_tokenizer(b, ["<s>", "<pad>", "</s>"], "<s> $A </s>",
                {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
  bv = vocab_lib.HFTokenizerVocab(b)
  bids = T.AutoTokenizer.from_pretrained(b)(text).input_ids
  assert bv.encode(text) + [bv.eos_id] == bids and bids[0] == 0 and bv.pad_id == 1

  # The model's and the tokenizer's special ids must agree.
  T.BartForConditionalGeneration(T.BartConfig(
      vocab_size=256, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
      decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
      max_position_embeddings=64, pad_token_id=3, eos_token_id=2)).save_pretrained(b)
  with pytest.raises(ValueError, match=r"vocabulary's padding id 1 \(.*tokenizer.json\) differs "
                                       r"from the model's pad_token_id=3 \(.*config.json\)"):
    tok_lib.run_vocab(_run_config(**{"model.hf_checkpoint": b}))
  with open(os.path.join(ll, "tokenizer_config.json"), "w") as f:
    json.dump({"eos_token": "<s>", "tokenizer_class": "PreTrainedTokenizerFast"}, f)
  with pytest.raises(ValueError, match="EOS id 1 .* differs from the model's eos_token_id=2"):
    tok_lib.run_vocab(_run_config(**{"model.hf_checkpoint": ll}))


# ----------------------------------------------------------------------------- runs (CLI)
RUN = ["--config.data.num_train=32", "--config.data.num_eval=8", "--config.train.batch_size=4",
       "--config.train.num_steps=2", "--config.train.log_every=2", "--config.train.eval_every=2",
       "--config.train.checkpoint_every=2", "--config.train.eval_batch_size=8",
       "--config.train.max_decode_length=4", "--config.data.truncate=True"]


def parse(args):
  return cli.parse("train", ["prompt-tuning"] + list(args))[1]


def cli_run(capsys, verb, *args, expect=0):
  argv = ["prompt-tuning"] + list(args)
  with mock.patch.object(sys, "argv", argv):
    rc = cli.execute(verb, argv)
  cap = capsys.readouterr()
  assert rc == expect, cap.err[-3000:]
  if expect:
    return cap.err
  out = cap.out
  return json.loads(out[out.rindex("\n{") + 1:] if "\n{" in out else out[out.index("{"):])


def restored(args):
  """(Experiment, trained params) of the run that ``args`` describe; the tuned values are put
  into exp.model."""
  from prompt_tuning import checkpoint as ckpt_lib
  from prompt_tuning.run.build import build
  config = parse(args)
  exp = build(config, with_data=False)
  ckpt = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "checkpoints"))
  state, _ = ckpt.restore(exp.trainer.init_state())
  ckpt.close()
  nnx.update(exp.model, state.params)
  return exp, state.params


def initial_params(args):
  from prompt_tuning.run.build import build
  return build(parse(args), with_data=False).trainer.init_state().params


def assert_same_params(a, b):
  fa, fb = dict(nnx.to_flat_state(a)), dict(nnx.to_flat_state(b))
  assert set(fa) == set(fb)
  for k in fa:
    np.testing.assert_allclose(np.asarray(fb[k][...]), np.asarray(fa[k][...]), atol=1e-6,
                               err_msg=str(k))


def test_lora_run_exports_and_a_new_run_starts_from_the_adapter(hf_dirs, tmp_path, capsys):
  """T5 with its spiece.model: trained through the CLI with the checkpoint's tokenizer, exported
  as a PEFT adapter and as a merged checkpoint (with the tokenizer), then a second run starts
  from the adapter and trains on."""
  t5 = str(tmp_path / "t5")
  shutil.copytree(hf_dirs["t5"], t5)
  with open(CORPUS) as f:
    vocab_lib.train_sentencepiece([l.strip() for l in f if l.strip()], t5, 200)
  args = [f"--config.model.hf_checkpoint={t5}", "--config.method.name=lora",
          "--config.method.lora.rank=2", f"--config.output_dir={tmp_path / 'run'}"] + RUN
  res = cli_run(capsys, "train", *args)
  assert res["step"] == 2
  exp, params = restored(args)
  assert exp.vocab.path == os.path.join(t5, "spiece.model")
  peft_dir, hf_dir = str(tmp_path / "peft"), str(tmp_path / "hf")
  r = cli_run(capsys, "export", *args, "--format=peft", f"--out={peft_dir}")
  assert r["files"] == ["adapter_config.json", "adapter_model.safetensors"] and r["step"] == 2
  r = cli_run(capsys, "export", *args, "--format=hf", f"--out={hf_dir}")
  assert {"config.json", "model.safetensors", "spiece.model"} <= set(r["files"])
  ids, mask, dec = batch(5)
  ours = our_logits(exp.model, ids, mask, dec)
  base = T.T5ForConditionalGeneration.from_pretrained(t5).eval()
  assert_close("t5", ours, torch_logits(peft.PeftModel.from_pretrained(base, peft_dir).eval(),
                                        "t5", ids, mask, dec), mask)
  merged = T.AutoModelForSeq2SeqLM.from_pretrained(hf_dir).eval()
  assert_close("t5", ours, torch_logits(merged, "t5", ids, mask, dec), mask)
  assert T.AutoTokenizer.from_pretrained(hf_dir)("a box").input_ids[-1] == 1
  # A new run whose initial state is the exported adapter; it trains on from there.
  args2 = [a.replace(str(tmp_path / "run"), str(tmp_path / "run2")) for a in args] + [
      f"--config.method.init_from={peft_dir}"]
  assert_same_params(params, initial_params(args2))
  res2 = cli_run(capsys, "train", *args2)
  assert res2["step"] == 2 and np.isfinite(res2["eval"]["synthetic_sentiment"]["loss"])
  # Exporting a prompt from a LoRA run is refused in one line.
  err = cli_run(capsys, "export", *args, "--format=prompt", f"--out={tmp_path / 'p'}", expect=2)
  assert "no soft prompt to export" in err and len(err.strip().splitlines()) == 1


def test_prompt_run_on_a_hub_id_with_its_tokenizer(hf_dirs, tmp_path, capsys, monkeypatch):
  """GPT-2 given as a Hub id (fake local cache) with a byte-level BPE tokenizer.json: trained,
  decoded, exported as a prompt file and a PEFT adapter; a second run starts from the file."""
  g = str(tmp_path / "gpt2")
  eot = bpe_tokenizer(g, ["<|endoftext|>"]).token_to_id("<|endoftext|>")
  cls, config = CASES["gpt2"]
  torch.manual_seed(0)
  cls(T.GPT2Config(**dict(config.to_dict(), vocab_size=320, bos_token_id=eot, eos_token_id=eot,
                          pad_token_id=None))).save_pretrained(g)   # 257 byte-level ids
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
  fake_cache(str(tmp_path / "cache"), "org/tiny-gpt2", g)
  monkeypatch.chdir(tmp_path)
  args = ["--config.model.hf_checkpoint=org/tiny-gpt2", "--config.method.prompt.length=4",
          f"--config.output_dir={tmp_path / 'run'}"] + RUN
  cli_run(capsys, "train", *args)
  out = cli_run(capsys, "infer", *args, "--input=review: the teacher found a good box")
  assert isinstance(out["outputs"][0], str)
  exp, params = restored(args)
  assert isinstance(exp.vocab, vocab_lib.HFTokenizerVocab) and exp.vocab.eos_id == eot
  prompt_dir, peft_dir = str(tmp_path / "prompt"), str(tmp_path / "peft")
  cli_run(capsys, "export", *args, "--format=prompt", f"--out={prompt_dir}")
  info = json.load(open(os.path.join(prompt_dir, "prompt.json")))
  assert info["base_model"] == {"hf_checkpoint": "org/tiny-gpt2"} and info["length"] == 4
  cli_run(capsys, "export", *args, "--format=peft", f"--out={peft_dir}")
  config = json.load(open(os.path.join(peft_dir, "adapter_config.json")))
  assert config["base_model_name_or_path"] == "org/tiny-gpt2"
  ids, mask, dec = batch(6)
  pm = peft.PeftModel.from_pretrained(cls.from_pretrained(hub.resolve("org/tiny-gpt2")).eval(),
                                      peft_dir).eval()
  assert_close("gpt2", our_logits(exp.model, ids, mask, dec),
               torch_logits(pm, "gpt2", ids, mask, dec)[:, 4:], mask)
  err = cli_run(capsys, "export", *args, "--format=hf", f"--out={tmp_path / 'hf'}", expect=2)
  assert "soft prompt cannot be merged" in err
  # SPoT-style: the prompt file starts another run (here on the same task).
  args2 = [a.replace(str(tmp_path / "run"), str(tmp_path / "run2")) for a in args] + [
      f"--config.method.init_from={os.path.join(prompt_dir, 'prompt.npy')}"]
  assert_same_params(params, initial_params(args2))
  assert cli_run(capsys, "train", *args2)["step"] == 2


def test_peft_export_of_a_preset_run_writes_the_base(tmp_path, capsys):
  args = ["--config.model.hf_checkpoint=", "--config.model.preset=tiny-llama",
          "--config.method.name=lora",
          "--config.method.lora.rank=2", "--config.method.lora.targets=('q','mlp')",
          f"--config.output_dir={tmp_path / 'run'}"] + RUN
  cli_run(capsys, "train", *args)
  exp, _ = restored(args)
  out = str(tmp_path / "peft")
  r = cli_run(capsys, "export", *args, "--format=peft", f"--out={out}")
  assert "base_model/config.json" in r["files"] and "base_model/spiece.model" in r["files"]
  base = T.LlamaForCausalLM.from_pretrained(os.path.join(out, "base_model")).eval()
  pm = peft.PeftModel.from_pretrained(base, out).eval()
  ids, mask, dec = batch(7)
  ids = ids % 200
  assert_close("llama", our_logits(exp.model, ids, mask, dec),
               torch_logits(pm, "llama", ids, mask, dec), mask)
