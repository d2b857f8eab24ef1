"""w2s_jax: weak-to-strong generalization in JAX/Flax."""

import os

# transformers serves only tokenizers and checkpoint files here (the models are our own Flax
# code), so its advice that PyTorch is missing concerns nothing a user asked for, and would stand
# above our one-line errors. Set before transformers is first imported; a user's setting wins.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
