"""Data layer. The modules here that need TensorFlow / seqio import it lazily; the vocabulary
and the synthetic tasks are TensorFlow-free."""
