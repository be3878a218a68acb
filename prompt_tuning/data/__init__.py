"""Data layer. ``inputs`` (one entry point for the training loop), ``pipeline`` (in-memory
iterators, packing, eval batches), ``files`` (the user's own files and Hugging Face datasets),
``vocab`` and ``synthetic`` are TensorFlow-free; ``seqio_pipeline`` imports TensorFlow / seqio
lazily, on first use."""
