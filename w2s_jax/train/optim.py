"""The optimizer: Adam/AdamW/Adafactor/SGD, a cosine or constant schedule, clipping, freezing.

OAI's defaults (weak-to-strong `train.py`): Adam (b1 0.9, b2 0.999), no weight decay,
no clipping, cosine annealing to 0 over all steps with no warm-up
(torch `CosineAnnealingLR(T_max=nsteps)`: lr_t = lr * (1 + cos(pi t / nsteps)) / 2,
which is `optax.cosine_decay_schedule(lr, nsteps)`).

Freezing is a regex over '/'-joined parameter paths (big_vision style): parameters
that `trainable` does not match get zero updates from `optax.set_to_zero` and, under
`optax.multi_transform`, no optimizer moments, so a linear probe on a frozen body
costs no optimizer memory for the body. (Not computing the body's gradient at all is
the train step's job; `trainable_mask` tells it which leaves are trainable.)
"""

import re
from typing import Any

import jax
import optax

from w2s_jax.errors import UserError

OPTIMIZERS = ("adam", "adamw", "adafactor", "sgd")
SCHEDULES = ("cosine", "constant")


def _key_name(key: Any) -> str:
  """One pytree key as a name: a dict key, an attribute name, or a sequence index."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_name(path: tuple[Any, ...]) -> str:
  """'/'-joined names of a key path, e.g. 'backbone/h/0/attn/c_attn/kernel'.

  The trailing `.value` of a Flax NNX `Variable` is dropped, so an `nnx.State` and its
  pure-dict form (`nnx.to_pure_dict`) give the same names.
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  return "/".join(_key_name(key) for key in path)


def param_paths(params: Any) -> Any:
  """A pytree shaped like `params` whose leaves are the leaves' '/'-joined path names."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path_name(path), params)


def _compile(trainable: str) -> re.Pattern:
  try:
    return re.compile(trainable)
  except re.error as e:
    raise UserError(f"trainable={trainable!r} is not a valid regex ({e}); fix the pattern") from e


def trainable_mask(params: Any, trainable: str | None) -> Any:
  """A pytree of bools shaped like `params`: True where `re.search(trainable, path)` matches.

  `trainable=None` means everything is trainable. A pattern that matches no parameter
  is almost surely a typo (a linear probe that trains nothing), so it is an error.
  """
  if trainable is None:
    return jax.tree_util.tree_map(lambda _: True, params)
  pattern = _compile(trainable)
  paths = param_paths(params)
  mask = jax.tree_util.tree_map(lambda path: bool(pattern.search(path)), paths)
  if not any(jax.tree_util.tree_leaves(mask)):
    examples = jax.tree_util.tree_leaves(paths)[:5]
    raise UserError(f"trainable={trainable!r} matches no parameter; parameter paths look like "
                    f"{examples}: fix the regex (e.g. '^head/')")
  return mask


def make_schedule(*, lr: float, total_steps: int, schedule: str = "cosine",
                  warmup_steps: int = 0) -> optax.Schedule:
  """The learning rate as a function of the step.

    warm-up (steps 0 .. warmup_steps): linear from 0 to lr (optax's convention: step 0
      has lr 0, step warmup_steps has lr);
    "cosine": then lr * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2, which is 0 at
      step total_steps (OAI's annealing when warmup_steps == 0);
    "constant": then lr.
  """
  if schedule not in SCHEDULES:
    raise UserError(f"unknown lr schedule {schedule!r}; use one of {SCHEDULES}")
  if lr < 0 or total_steps < 1:
    raise UserError(f"lr={lr} must be >= 0 and total_steps={total_steps} >= 1; "
                    "check the learning rate and the number of training examples/epochs")
  if not 0 <= warmup_steps < total_steps:
    raise UserError(f"warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}); "
                    "shorten the warm-up")
  if schedule == "cosine":
    if warmup_steps == 0:
      return optax.cosine_decay_schedule(lr, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, total_steps, end_value=0.0)
  if warmup_steps == 0:
    return optax.constant_schedule(lr)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)],
      [warmup_steps])


def _base_optimizer(name: str, learning_rate: optax.Schedule, weight_decay: float, b1: float,
                    b2: float) -> optax.GradientTransformation:
  """The optimizer's own update rule, with the schedule as its learning rate."""
  if name == "adam":
    if weight_decay:
      raise UserError(f"optimizer 'adam' takes no weight_decay (got {weight_decay}); "
                      "use name='adamw' for decoupled weight decay")
    return optax.adam(learning_rate, b1=b1, b2=b2)
  if name == "adamw":
    return optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)
  if name == "adafactor":
    # b1/b2 do not apply: Adafactor keeps factored second moments with its own decay.
    # OAI's torch_optimizer Adafactor is not bit-identical to optax's.
    return optax.adafactor(learning_rate, weight_decay_rate=weight_decay or None)
  if name == "sgd":
    if weight_decay:
      raise UserError(f"optimizer 'sgd' takes no weight_decay (got {weight_decay}); "
                      "use name='adamw' for decoupled weight decay")
    return optax.sgd(learning_rate)
  raise UserError(f"unknown optimizer {name!r}; use one of {OPTIMIZERS}")


def make_optimizer(*, name: str = "adam", lr: float, total_steps: int, schedule: str = "cosine",
                   warmup_steps: int = 0, weight_decay: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999, clip_norm: float | None = None,
                   trainable: str | None = None) -> optax.GradientTransformation:
  """The full gradient transformation: [clip by global norm] -> optimizer, on trainable leaves.

  Args:
    name: "adam" (OAI's default), "adamw", "adafactor" or "sgd" (plain, no momentum).
    lr: peak learning rate; total_steps, schedule, warmup_steps: see `make_schedule`.
    weight_decay: decoupled weight decay (adamw; adafactor's weight_decay_rate).
    b1, b2: Adam's moment decays (adam, adamw).
    clip_norm: if set, gradients are scaled so that their global norm is at most this,
      the norm being taken over the trainable parameters only.
    trainable: regex over '/'-joined parameter paths (`re.search`, e.g. '^head/');
      parameters that do not match get zero updates and keep no optimizer state.
      None trains everything.

  Returns:
    An `optax.GradientTransformation`; with `trainable` set, its `init` checks the
    regex against the parameters and raises `UserError` if it matches none.
  """
  learning_rate = make_schedule(lr=lr, total_steps=total_steps, schedule=schedule,
                                warmup_steps=warmup_steps)
  if clip_norm is not None and clip_norm <= 0:
    raise UserError(f"clip_norm={clip_norm} must be positive; or None for no clipping")
  tx = _base_optimizer(name, learning_rate, weight_decay, b1, b2)
  if clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  if trainable is None:
    return tx
  _compile(trainable)  # a malformed pattern fails here, not at init

  def labels(params):
    mask = trainable_mask(params, trainable)
    return jax.tree_util.tree_map(lambda m: "trainable" if m else "frozen", mask)

  return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
