"""Analysis tools: scaling-law fits and sweeps."""
