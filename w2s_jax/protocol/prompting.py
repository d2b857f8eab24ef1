"""The prompting stage: a pretrained decoder scored zero-shot and k-shot, with no training.

The paper sets finetuning beside prompting: how much of a task a model does from its
pretraining alone says how salient the task is to it. Here a prompt is `config.prompting`'s
instruction, k demonstrations drawn from half A (labelled data, which the supervisors train
on too; never half B or test), then the query; the model's logit for a class is the summed
log-probability of its label word after the prompt (w2s_jax/train/choices.py), so accuracy
and AUROC are computed exactly as for a fine-tuned model on the same test set.

  classification:   "{instruction}{demo text}{answer prefix} {word}\\n\\n ... {text}{answer prefix}"
                    with candidates " {label_words[0]}", " {label_words[1]}";
  multiple choice:  each demonstration is a solved example (prompt + right candidate), the query
                    is the example's own prompt and candidates (a chess position and its legal moves).

Encoders have no LM head and are skipped. `config.prompting.shots` lists the k to run (empty:
none); each (model, k, seed) is a cached stage, its demonstrations drawn with the seed.
"""

import numpy as np

from w2s_jax import seeds
from w2s_jax.data import choice_batching, tasks
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints
from w2s_jax.protocol import pgr
from w2s_jax.protocol.context import Context, ModelSpec, SeedData, StageResult, check_join
from w2s_jax.train import choices


def is_decoder(ctx: Context, name: str) -> bool:
  directory = checkpoints.resolve_checkpoint(ctx.models[name].checkpoint)
  from w2s_jax import models
  return models.config_from_hf(checkpoints.read_hf_config(directory)).kind == "decoder"


def _demo_text(example, options: dict) -> str:
  if isinstance(example, tasks.ChoiceExample):
    return f"{example.text}{example.candidates[example.label]}\n\n"
  return f"{example.text}{options['answer_prefix']} {options['label_words'][example.label]}\n\n"


def check_task(data: SeedData) -> None:
  """Refuses a task that cannot be prompted for (the sweep calls it before any stage trains)."""
  if tasks.is_preference(data.task.test):
    raise UserError(f"{data.task.name} is a preference task (pairs of responses for a reward model), which has no "
                    "label words to prompt for: set prompting.shots=()")


def prompted_examples(data: SeedData, shots: int, options: dict, seed: int) -> list[tasks.ChoiceExample]:
  """The test set as multiple-choice prompts with `shots` demonstrations from half A (one draw per seed)."""
  check_task(data)
  if shots > len(data.half_a):
    raise UserError(f"prompting.shots={shots} is more than half A's {len(data.half_a)} examples")
  words = tuple(options["label_words"])
  if len(words) != 2 or len(set(words)) != 2 or not all(w.strip() for w in words):
    raise UserError(f"prompting.label_words={words} must be two different, non-empty words (class 0, class 1)")
  rng = np.random.default_rng(seeds.derive(seed, "prompting", shots))
  demos = [data.half_a[i] for i in rng.permutation(len(data.half_a))[:shots]]
  context = options["instruction"] + "".join(_demo_text(e, options) for e in demos)
  out = []
  for e in data.task.test:
    if isinstance(e, tasks.ChoiceExample):
      out.append(tasks.ChoiceExample(context + e.text, e.candidates, e.label, e.uid))
    else:
      out.append(tasks.ChoiceExample(f"{context}{e.text}{options['answer_prefix']}", tuple(f" {w}" for w in words),
                                     e.label, e.uid))
  return out


def prompting(ctx: Context, name: str, data: SeedData, shots: int) -> StageResult:
  """`name`'s test metrics when prompted with `shots` demonstrations (no training)."""
  seed = data.seed
  stage, view = ctx.stage("prompting", model=name, seed=seed, shots=shots)
  cached = ctx.load_or_clear(stage)
  if cached is not None:
    out = StageResult(stage, *cached)
  else:
    model = ModelSpec.from_view(name, view)
    examples = prompted_examples(data, shots, view.under("prompting"), seed)
    loaded = ctx.load(model, task="lm")
    tokenizer = ctx.tokenizer(model)
    # max_length bounds each text; the prompt may hold k + 1 of them, and the instruction's own tokens.
    instruction = len(tokenizer(view["prompting.instruction"], add_special_tokens=False)["input_ids"])
    budget = (view["max_length"] + 8) * (shots + 1) + instruction  # + 8 a text: its answer prefix and word
    tokenized = choice_batching.tokenize_choices(examples, tokenizer, budget)
    logits = choices.predict_logits(loaded, loaded.params, tokenized, ctx.mesh, batch_size=view["train.batch_size"],
                                    pad_id=tokenizer.pad_token_id, num_choices=data.num_classes,
                                    desc=f"prompting {name} {shots}-shot")
    result = {"model": name, "seed": seed, "shots": shots, "n_truncated": tokenized.n_truncated,
              **pgr.test_metrics(logits, data.task.test)}
    out = ctx.save_predictions(stage, result, {"test": logits}, {"test": data.task.test})
  check_join(out.arrays["test_uids"], data.task.test, stage, "test")
  return out
