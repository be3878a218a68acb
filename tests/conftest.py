import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# scipy's L-BFGS (the scaling-law fits) on a loaded 2-core machine: OpenBLAS threads made one fit
# 10x slower (21 s vs 1.9 s single-threaded).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: minutes-long end-to-end tests (skip with -m 'not slow')")
