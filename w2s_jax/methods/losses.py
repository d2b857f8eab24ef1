"""Loss methods: the student's loss (`w2s_jax/train/losses.py` holds the functions).

The interface: `impl` is the loss's name in `train.losses.LOSSES`; the loop binds the options
(`losses.get_loss(name, **options)`), which also checks them.
"""

from w2s_jax.methods import Method, register
from w2s_jax.train import losses

_ALPHA = dict(alpha_max=0.5, warmup_frac=0.1, schedule="linear")  # 'oai_jump' reproduces OAI's code
OPTIONS = {"logconf": _ALPHA, "product": dict(alpha=1.0, beta=1.0), "entropy": dict(_ALPHA), "window": dict(radius=0.15)}
SOURCES = {"lm": "the paper (chess: the supervisor's move as the completion)", "xent": "the paper", "xent_hard": "the paper", "logconf": "the paper", "product": "OAI's code",
           "entropy": "EleutherAI/w2s (negative control)", "window": "EleutherAI/w2s (negative control)"}

for _name, _line in losses.describe().items():
  register(Method(_name, "loss", _line, _name, options=dict(OPTIONS.get(_name, {})), source=SOURCES.get(_name, "")))
