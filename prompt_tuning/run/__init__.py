"""What a run does, one module per verb: build (an Experiment from a config), loop (train),
evaluate, infer, sweep. The CLI (prompt_tuning/cli.py) parses flags and dispatches here.

Imports go one way: build <- evaluate <- loop <- sweep, and build <- infer. Nothing is imported
here so that ``import prompt_tuning.run.build`` stays as cheap as its own dependencies.
"""
