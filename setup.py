from setuptools import find_packages, setup

# `tensorflow`, not `tensorflow-cpu`: seqio's tensorflow-text requires `tensorflow` by name, so
# asking for tensorflow-cpu too installed a second TensorFlow over the first (its Linux wheel runs
# on CPUs; GPUs only with tensorflow[and-cuda]).
TASKS = ["tensorflow>=2.16", "seqio>=0.0.19", "tensorflow-datasets>=4.9",
         "importlib_resources", "sacrebleu", "rouge-score"]

setup(
    name="prompt-tuning-jax",
    version="0.1.0",
    description="Parameter-efficient tuning (soft prompts, LoRA, full, layer subsets) of T5 and "
                "other language models in JAX / Flax NNX",
    packages=find_packages(include=["prompt_tuning", "prompt_tuning.*"]),
    # The shipped pretrained tiny T5 (HF checkpoint directory) of the default job.
    package_data={"prompt_tuning.data": ["assets/*.txt"], "prompt_tuning": ["assets/tiny_t5/*"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.12",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "numpy",
        "sentencepiece",
        "safetensors",
        "ml-collections",
        "absl-py",
        # tokenizer.json (BPE: GPT-2, BART, Llama, ...); brings huggingface_hub and its `hf` CLI
        # (`hf download ID` fetches a Hub checkpoint into the local cache).
        "tokenizers>=0.20",
    ],
    extras_require={
        # The data layer: seqio task registries over TFDS, and their metrics.
        "tasks": TASKS,
        # Own data from Hugging Face datasets (data.hf_dataset; local files and cache only).
        "hf-datasets": ["datasets>=2.14"],
        # `prompt-tuning sweep` plots the swept axes (sweep.png); without it: table and CSV only.
        "plot": ["matplotlib"],
        # `tensorboard --logdir runs/` reads the event files of every run (output_dir/tensorboard).
        "tensorboard": ["tensorboard"],
        # Parity tests need the PyTorch reference: torch pinned to the CPU wheel on our machines.
        # peft: our PEFT exports are checked by loading them with PEFT itself.
        "test": ["pytest", "torch==2.13.0", "transformers>=5", "peft>=0.21", "nbclient", "nbformat",
                 "ipykernel", "matplotlib", "datasets>=2.14"] + TASKS,
    },
    entry_points={"console_scripts": ["prompt-tuning=prompt_tuning.cli:main"]},
)
