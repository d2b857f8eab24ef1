"""The student's losses: cross-entropy, the auxiliary confidence loss, the product loss, and
EleutherAI's negative controls (entropy, confidence window).

Every loss has one signature, so the train step can call any of them without knowing
which it is:

    fn(logits [batch, classes], targets [batch, classes], weight [batch], progress)
        -> (loss: f32 scalar, aux: dict[str, f32 scalar])

  * `targets` are the supervisor's soft labels (rows sum to 1; ground truth is a
    one-hot row), so the same code trains the weak model on ground truth and the
    student on weak labels.
  * `weight` is 1 for real rows and 0 for padding rows (the last batch of an epoch is
    padded to a fixed shape so that the step compiles once). Every mean, quantile and
    fraction uses only the real rows: padding never changes a loss. A batch of padding
    only has loss 0 (not NaN, which would poison the gradient sum of an accumulation).
    A real row may weigh less than 1 (a per-example weight in (0, 1]): means are weighted
    by `weight`, so it counts that fraction of a row; logconf's threshold is a quantile
    over the rows of weight > 0, unweighted (a down-weighted row is still a real row).
  * `progress` is the fraction of training done, a traced f32 scalar in [0, 1], so that
    schedules of a loss's own coefficients (logconf's alpha) work inside `jax.jit`.

Batch statistics. A loss whose value depends on statistics of the whole global batch
(logconf's threshold) declares them in `BATCH_STATISTICS`:

    stats_fn(logits [B, C], targets [B, C], weight [B], progress, **options) -> dict[str, array]

and accepts them as `fn(..., stats=stats)`; without `stats` it computes them from its
own rows, so a direct call and a step without accumulation are unchanged. With
gradient accumulation the train step computes them once from the logits of the whole
batch (a forward pass without gradients) and hands them to every microbatch's call, so
that the accumulated loss is exactly one call on the whole batch. Statistics carry no
gradient. `get_loss` returns a `Loss` that bundles both; losses without statistics
(xent, xent_hard, product) declare none and cost no extra forward pass.

All arithmetic is float32 whatever the logits' dtype: the losses are cheap, and the
logconf quantile and the product's normalisation are fragile in bfloat16.

Reference: Burns et al. 2023 and its code (github openai/weak-to-strong,
`weak_to_strong/loss.py`, "OAI" below). Where we deliberately differ, the docstring
says so.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

from w2s_jax.errors import UserError

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
StatsFn = Callable[..., dict[str, jax.Array]]

ALPHA_SCHEDULES = ("linear", "oai_jump")


def _masked_mean(values: jax.Array, weight: jax.Array) -> jax.Array:
  """sum(weight * values) / sum(weight); 0 for a batch of padding only.

  `jnp.where` (not a product) keeps a padding row's inf/NaN out of the sum.
  """
  weight = weight.astype(jnp.float32)
  total = jnp.sum(jnp.where(weight > 0, weight * values, 0.0))
  return total / jnp.maximum(jnp.sum(weight), jnp.finfo(jnp.float32).tiny)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-row cross-entropy H(targets, softmax(logits)) = -sum_c targets_c log softmax(logits)_c.

  Returns [batch] float32. `targets` rows are probability vectors (soft labels).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [batch, classes]
  # where(): a target of exactly 0 times a log-prob of -inf contributes 0, not NaN.
  terms = jnp.where(targets > 0, targets.astype(jnp.float32) * log_probs, 0.0)
  return -jnp.sum(terms, axis=-1)


def xent(logits: jax.Array, targets: jax.Array, weight: jax.Array,
         progress: jax.Array | float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy against the supervisor's soft labels.

    loss = sum_i w_i * ( -sum_c t_ic log softmax(z_i)_c ) / sum_i w_i

  As OAI's `xent_loss` (torch `cross_entropy` with probability targets). `progress`
  is unused; it is there so that every loss has the same signature.
  """
  del progress
  return _masked_mean(soft_cross_entropy(logits, targets), weight), {}


def xent_hard(logits: jax.Array, targets: jax.Array, weight: jax.Array,
              progress: jax.Array | float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy against the supervisor's hard labels argmax_c(targets).

    loss = sum_i w_i * ( -log softmax(z_i)_{argmax_c t_ic} ) / sum_i w_i

  A tie (a binary soft label of exactly 0.5) goes to the lower class index, as
  `argmax` does; OAI's train accuracy breaks ties the same way.
  """
  del progress
  hard = jax.nn.one_hot(jnp.argmax(targets, axis=-1), targets.shape[-1], dtype=jnp.float32)
  return _masked_mean(soft_cross_entropy(logits, hard), weight), {}


def logconf_alpha(progress: jax.Array | float, *, alpha_max: float = 0.5,
                  warmup_frac: float = 0.1, schedule: str = "linear") -> jax.Array:
  """The weight alpha of the student's hardened predictions in logconf, at `progress`.

    "linear" (default; the paper's description, and EleutherAI's fix):
        alpha = alpha_max * min(1, progress / warmup_frac)   (alpha_max if warmup_frac == 0)
    "oai_jump" (OAI's code, only to reproduce its numbers):
        alpha = alpha_max * progress  if progress <= warmup_frac  else alpha_max
      i.e. it ramps to only alpha_max * warmup_frac (0.05 with the defaults) and then
      jumps to alpha_max (0.5) at 10% of training: OAI computes the ramp from the raw
      step fraction instead of step_frac / warmup_frac, a reported bug.
  """
  if schedule not in ALPHA_SCHEDULES:
    raise UserError(f"logconf: unknown alpha schedule {schedule!r}; use one of {ALPHA_SCHEDULES}")
  progress = jnp.asarray(progress, jnp.float32)
  if schedule == "oai_jump":
    return jnp.where(progress > warmup_frac, alpha_max, alpha_max * progress)
  if warmup_frac <= 0:
    return jnp.full_like(progress, alpha_max)
  return alpha_max * jnp.minimum(1.0, progress / warmup_frac)


def masked_quantile(values: jax.Array, q: jax.Array, real: jax.Array) -> jax.Array:
  """The q-quantile of `values[real]` with linear interpolation (torch.quantile's default).

  With the n real values sorted as v_0 <= ... <= v_{n-1}, position p = q * (n - 1):
    quantile = v_floor(p) + (p - floor(p)) * (v_ceil(p) - v_floor(p)).
  Padding rows are sorted past the end (+inf) and never reached, since p <= n - 1.
  """
  n = jnp.maximum(jnp.sum(real), 1)
  ordered = jnp.sort(jnp.where(real, values, jnp.inf))  # [batch], real values first
  position = jnp.clip(q, 0.0, 1.0) * (n - 1)
  lo = jnp.floor(position).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, n - 1)
  v_lo, v_hi = ordered[lo], ordered[hi]
  # where(): avoid inf * 0 when lo == hi == n - 1 is the last real value.
  return jnp.where(hi > lo, v_lo + (position - lo) * (v_hi - v_lo), v_lo)


def weak_prior_threshold(probs: jax.Array, targets: jax.Array, weight: jax.Array) -> dict[str, jax.Array]:
  """Binary: what `harden_by_weak_prior` needs from the batch, over its real rows.

    weak_class1_mean = sum_i w_i t_i1 / sum_i w_i
    threshold        = quantile of {p_i0 : w_i > 0} at q = weak_class1_mean
  """
  weak_class1_mean = _masked_mean(targets[:, 1].astype(jnp.float32), weight)
  threshold = masked_quantile(probs[:, 0].astype(jnp.float32), weak_class1_mean, weight > 0)
  return {"threshold": threshold, "weak_class1_mean": weak_class1_mean}


def harden_by_weak_prior(probs: jax.Array, targets: jax.Array, weight: jax.Array,
                         stats: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Binary: the student's predictions hardened so that their class balance is the weak labels'.

  threshold = quantile of the student's p(class 0) over the batch's real rows, at
  q = the weak labels' mean class-1 mass; rows with p(class 0) < threshold become
  class 1, the others class 0. About a fraction q of the real rows becomes class 1:
  exactly q * n when q * n is a whole number and q < 1 (as OAI, which computes
  `torch.quantile(preds[:, 0], mean_weak[1])`; at q = 1 the row with the largest
  p(class 0) still becomes class 0).

  stats: `weak_prior_threshold` of a larger batch these rows belong to (the whole
    global batch under gradient accumulation); None = of these rows.

  Returns the hardened one-hot rows [batch, 2] and diagnostics (`hardened_class1_frac`
  is over these rows).
  """
  if stats is None:
    stats = weak_prior_threshold(probs, targets, weight)
  is_class1 = probs[:, 0] < stats["threshold"]  # [batch]
  hardened = jax.nn.one_hot(is_class1.astype(jnp.int32), 2, dtype=jnp.float32)
  aux = {
      "threshold": stats["threshold"],
      "weak_class1_mean": stats["weak_class1_mean"],
      "hardened_class1_frac": _masked_mean(is_class1.astype(jnp.float32), weight),
  }
  return hardened, aux


def logconf_batch_statistics(logits: jax.Array, targets: jax.Array, weight: jax.Array,
                             progress: jax.Array | float = 0.0, **options) -> dict[str, jax.Array]:
  """logconf's batch statistics: the threshold and the weak class-1 mean (binary), else none.

  More than two classes harden by argmax, row by row, and need nothing from the batch,
  so the result is {} and the train step skips the extra forward pass. `progress` and
  the loss's `options` (alpha_max, …) do not enter.
  """
  del progress, options
  if logits.shape[-1] != 2:
    return {}
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [batch, 2]
  return weak_prior_threshold(probs, targets.astype(jnp.float32), weight)


def logconf(logits: jax.Array, targets: jax.Array, weight: jax.Array,
            progress: jax.Array | float, *, stats: dict[str, jax.Array] | None = None,
            alpha_max: float = 0.5, warmup_frac: float = 0.1,
            schedule: str = "linear") -> tuple[jax.Array, dict[str, jax.Array]]:
  """The auxiliary confidence loss: cross-entropy against a mix of weak labels and own beliefs.

    alpha  = logconf_alpha(progress; alpha_max, warmup_frac, schedule)
    target = (1 - alpha) * weak + alpha * stop_gradient(hardened(softmax(z)))
    loss   = sum_i w_i * ( -sum_c target_ic log softmax(z_i)_c ) / sum_i w_i

  Binary tasks: `hardened` is `harden_by_weak_prior`, with the threshold and the weak
  class-1 mean taken over the whole global batch, as OAI (which stacks the logits of
  all minibatches and calls the loss once), whatever the microbatching: the train step
  computes them with `logconf_batch_statistics` on the whole batch and passes them as
  `stats`, and each microbatch hardens its own rows against them. stats=None: they
  are computed from these rows (the whole batch when there is one microbatch).
  More than two classes (our extension; OAI asserts binary): `hardened` is the
  one-hot argmax of the student's prediction, since no single class-1 mass exists to
  match; no statistics are needed.

  Deliberate differences from OAI: alpha warms up linearly to alpha_max by default
  (schedule="oai_jump" reproduces OAI); the threshold and the weak mean use only the
  real rows of a padded batch.
  """
  logits = logits.astype(jnp.float32)
  targets = targets.astype(jnp.float32)
  alpha = logconf_alpha(progress, alpha_max=alpha_max, warmup_frac=warmup_frac,
                        schedule=schedule)
  probs = jax.nn.softmax(logits, axis=-1)  # [batch, classes]
  num_classes = logits.shape[-1]
  if num_classes == 2:
    if stats is not None:
      stats = jax.tree.map(jax.lax.stop_gradient, stats)
    hardened, aux = harden_by_weak_prior(probs, targets, weight, stats)
  else:
    hardened = jax.nn.one_hot(jnp.argmax(probs, axis=-1), num_classes, dtype=jnp.float32)
    aux = {}
  # The hardened predictions are a target, not a path for the gradient.
  mixed = (1.0 - alpha) * targets + alpha * jax.lax.stop_gradient(hardened)
  loss = _masked_mean(soft_cross_entropy(logits, mixed), weight)
  return loss, {"alpha": alpha, **aux}


def product(logits: jax.Array, targets: jax.Array, weight: jax.Array,
            progress: jax.Array | float = 0.0, *, alpha: float = 1.0,
            beta: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy against the normalised product of the student's and the weak beliefs.

    target_ic = p_student_ic^beta * p_weak_ic^alpha / sum_c' (p_student_ic'^beta * p_weak_ic'^alpha)
    loss      = sum_i w_i * ( -sum_c stop_gradient(target_ic) log softmax(z_i)_c ) / sum_i w_i

  As OAI's `product_loss_fn` (alpha = weight of the weak model, beta = of the
  student). We form the product in log space (a softmax of beta*log p_student +
  alpha*log p_weak), so that a student probability that underflows in float32 does
  not give 0/0; a weak probability of exactly 0 is floored at the smallest normal
  float32 (its target entry is then ~1e-38 instead of 0). OAI's unused `warmup_frac`
  is left out. `progress` is unused.
  """
  del progress
  logits = logits.astype(jnp.float32)
  log_student = jax.nn.log_softmax(logits, axis=-1)  # [batch, classes]
  log_weak = jnp.log(jnp.maximum(targets.astype(jnp.float32), jnp.finfo(jnp.float32).tiny))
  target = jax.nn.softmax(beta * log_student + alpha * log_weak, axis=-1)
  target = jax.lax.stop_gradient(target)
  return _masked_mean(soft_cross_entropy(logits, target), weight), {}


def entropy(logits: jax.Array, targets: jax.Array, weight: jax.Array,
            progress: jax.Array | float, *, alpha_max: float = 0.5, warmup_frac: float = 0.1,
            schedule: str = "linear") -> tuple[jax.Array, dict[str, jax.Array]]:
  """logconf without hardening: cross-entropy against a mix of weak labels and the student's own soft beliefs.

    alpha  = logconf_alpha(progress; alpha_max, warmup_frac, schedule)
    target = (1 - alpha) * weak + alpha * stop_gradient(softmax(z))
    loss   = sum_i w_i * ( -sum_c target_ic log softmax(z_i)_c ) / sum_i w_i

  The alpha term pulls the student toward its own predictions, i.e. it lowers their entropy
  (EleutherAI/w2s's `log_confidence_loss` with harden=False, its "entropy" loss). A negative
  control for logconf: it has the confidence term without the class-balanced hardening, and
  needs no batch statistics.
  """
  logits = logits.astype(jnp.float32)
  alpha = logconf_alpha(progress, alpha_max=alpha_max, warmup_frac=warmup_frac, schedule=schedule)
  own = jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))  # [batch, classes]
  mixed = (1.0 - alpha) * targets.astype(jnp.float32) + alpha * own
  return _masked_mean(soft_cross_entropy(logits, mixed), weight), {"alpha": alpha}


def window(logits: jax.Array, targets: jax.Array, weight: jax.Array,
           progress: jax.Array | float = 0.0, *, radius: float = 0.15) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy against the weak labels only where the student is still uncertain.

    uncertain_i = max_c softmax(z_i)_c < 0.5 + radius
    loss        = sum_i w_i * [uncertain_i] * ( -sum_c t_ic log softmax(z_i)_c ) / sum_i w_i

  EleutherAI/w2s's confidence-window loss (a negative control): once the student is
  confident about a row, the weak label of that row stops pulling on it. The mean is over all
  real rows, so a batch in which the student is sure of everything has loss 0. `progress` is
  unused.
  """
  del progress
  logits = logits.astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  uncertain = jnp.max(probs, axis=-1) < 0.5 + radius  # [batch]
  # where(), not a product: a confident row contributes exactly 0 whatever its cross-entropy.
  loss = _masked_mean(jnp.where(uncertain, soft_cross_entropy(logits, targets), 0.0), weight)
  return loss, {"uncertain_frac": _masked_mean(uncertain.astype(jnp.float32), weight)}


def lm(logits: jax.Array, targets: jax.Array, weight: jax.Array,
       progress: jax.Array | float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Language-modelling loss: the target completion's negative log-likelihood, prompt masked.

    loss = sum_i w_i * ( -sum_k t_ik s_ik ) / sum_i w_i

  For a language model on multiple-choice examples only (w2s_jax/train/choices.py): s_ik, the
  "logits", are the summed token log-probabilities of candidate k after prompt i, so with a
  hard target this is the next-token cross-entropy summed over the completion's tokens (the
  chess move the supervisor chose); a soft target weighs each candidate's NLL by its
  probability. Unlike `xent` it does not normalise over the candidates: it raises the
  target's likelihood without pushing the others down. A row's loss is a sum over its
  tokens, so every completion token weighs the same, as in a token mean. `progress` is unused.
  """
  del progress
  logits = logits.astype(jnp.float32)
  # where(): an empty slot's logit (a large negative constant) times its target 0 adds nothing.
  nll = -jnp.sum(jnp.where(targets > 0, targets.astype(jnp.float32) * logits, 0.0), axis=-1)
  return _masked_mean(nll, weight), {}


LOSSES: dict[str, LossFn] = {
    "lm": lm,
    "xent": xent,
    "xent_hard": xent_hard,
    "logconf": logconf,
    "product": product,
    "entropy": entropy,
    "window": window,
}

# The losses that need statistics of the whole global batch (see the module docstring);
# such a loss takes them as its `stats=` keyword.
BATCH_STATISTICS: dict[str, StatsFn] = {
    "logconf": logconf_batch_statistics,
}


@dataclasses.dataclass(frozen=True, eq=False)
class Loss:
  """A loss with its options bound: loss(logits, targets, weight, progress, *, stats=None) -> (loss, aux).

  needs_batch_statistics: the loss declares statistics of the whole global batch; the
    train step then computes `batch_statistics` once on the whole batch and passes them
    to every microbatch as `stats` (it still skips the extra pass when they come out
    empty for this batch's shapes, e.g. logconf with more than two classes).
  """

  name: str
  fn: LossFn
  statistics_fn: StatsFn | None = None

  @property
  def needs_batch_statistics(self) -> bool:
    return self.statistics_fn is not None

  def batch_statistics(self, logits: jax.Array, targets: jax.Array, weight: jax.Array,
                       progress: jax.Array | float = 0.0) -> dict[str, jax.Array]:
    """The loss's statistics of the batch (logits [B, C], targets [B, C], weight [B]); {} if none."""
    if self.statistics_fn is None:
      return {}
    stats = self.statistics_fn(logits, targets, weight, progress)
    # They condition the loss, like a target: no gradient flows through them.
    return jax.tree.map(jax.lax.stop_gradient, stats)

  def __call__(self, logits: jax.Array, targets: jax.Array, weight: jax.Array,
               progress: jax.Array | float = 0.0, *,
               stats: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    if stats is None:
      return self.fn(logits, targets, weight, progress)
    if self.statistics_fn is None:
      raise TypeError(f"loss {self.name!r} takes no batch statistics (got {sorted(stats)})")
    return self.fn(logits, targets, weight, progress, stats=stats)


def describe() -> dict[str, str]:
  """{name: the first line of its docstring} for every registered loss (`main.py --list_methods`)."""
  return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in LOSSES.items()}


def get_loss(name: str, **kwargs) -> Loss:
  """The loss `name` with its options bound, as a `Loss`: loss(logits, targets, weight, progress).

  Options are checked here, once, rather than at the first traced call.
  """
  if name not in LOSSES:
    raise UserError(f"unknown loss {name!r}; set the loss to one of {sorted(LOSSES)}")
  fn = LOSSES[name]
  try:
    inspect.signature(fn).bind(None, None, None, None, **kwargs)
    if "stats" in kwargs:
      raise TypeError("'stats' is computed per batch, not an option")
  except TypeError as e:
    raise UserError(f"loss {name!r}: bad options {sorted(kwargs)} ({e}); "
                    f"see the docstring of w2s_jax.train.losses.{fn.__name__}") from e
  if name in ("logconf", "entropy"):
    logconf_alpha(0.0, **kwargs)  # an unknown schedule fails now, not inside jit
    alpha_max, warmup_frac = kwargs.get("alpha_max", 0.5), kwargs.get("warmup_frac", 0.1)
    if not (0.0 <= alpha_max <= 1.0 and 0.0 <= warmup_frac <= 1.0):
      raise UserError(f"{name}: alpha_max={alpha_max} and warmup_frac={warmup_frac} must both "
                      "lie in [0, 1]; the target mixes weak labels and the student's predictions")
  if name == "window" and not 0.0 <= kwargs.get("radius", 0.15) <= 0.5:
    raise UserError(f"window: radius={kwargs['radius']} must lie in [0, 0.5]: rows whose top class "
                    "probability is under 0.5 + radius are trained")
  stats_fn = BATCH_STATISTICS.get(name)
  return Loss(name, functools.partial(fn, **kwargs),
              None if stats_fn is None else functools.partial(stats_fn, **kwargs))
