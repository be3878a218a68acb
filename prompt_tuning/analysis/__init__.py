"""Analysis tools: scaling-law fits and sweeps, critical layers, sparse fine-tuning, and the
tables and plots of the paper reproductions (configs/repro_*.py)."""
