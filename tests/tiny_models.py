"""Tiny real checkpoints for end-to-end tests: random-initialised HF models + a word-level tokenizer,
saved with save_pretrained exactly as a user's checkpoint directory would be."""

import json
from pathlib import Path

import numpy as np
import tokenizers
import torch
import transformers

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "movie", "food", "was", "very", "quite",
         "really", "service", "plot", "and", "but", "so"]
POSITIVE, NEGATIVE = WORDS[:3], WORDS[3:6]


def word_tokenizer() -> transformers.PreTrainedTokenizerFast:
  vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                              eos_token="[EOS]")


def char_tokenizer() -> transformers.PreTrainedTokenizerFast:
  """One token per printable ASCII character (a FEN, a UCI move): what a tiny chess model reads."""
  chars = [chr(c) for c in range(32, 127)]
  vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2} | {c: i + 3 for i, c in enumerate(chars)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                              eos_token="[EOS]")


def save_llama(directory: Path, *, hidden: int = 32, layers: int = 2, chars: bool = False, seed: int = 0) -> Path:
  """A tiny random Llama (tied embeddings) with the word tokenizer, or the character one."""
  torch.manual_seed(seed)
  tok = char_tokenizer() if chars else word_tokenizer()
  config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                    num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=256, tie_word_embeddings=True,
                                    bos_token_id=2, eos_token_id=2, pad_token_id=0)
  transformers.LlamaForCausalLM(config).save_pretrained(directory)
  tok.save_pretrained(directory)
  return directory


def save_gpt2(directory: Path, *, n_embd: int, n_layer: int, seed: int = 0) -> Path:
  torch.manual_seed(seed)
  tok = word_tokenizer()
  config = transformers.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=n_embd, n_layer=n_layer,
                                   n_head=2, bos_token_id=2, eos_token_id=2)
  transformers.GPT2LMHeadModel(config).save_pretrained(directory)
  tok.save_pretrained(directory)
  return directory


def gpt2_pair(root: Path, *, strong_embd: int, strong_layers: int, n_examples: int) -> dict[str, Path]:
  """The sweep tests' assets: a weak GPT-2 (8 wide, 1 layer), a stronger one, and a sentiment jsonl task."""
  return {"weak": save_gpt2(root / "weak", n_embd=8, n_layer=1),
          "strong": save_gpt2(root / "strong", n_embd=strong_embd, n_layer=strong_layers, seed=1),
          "task": sentiment_jsonl(root / "task.jsonl", n_examples)}


def sentiment_jsonl(path: Path, n: int, seed: int = 0) -> Path:
  """Label 1 iff the sentence ends with a positive word (one sentiment word, last: a model that pools
  the last token can learn it in a few dozen steps)."""
  rng = np.random.default_rng(seed)
  fillers = WORDS[6:]
  with open(path, "w") as f:
    for i in range(n):
      label = int(rng.integers(2))
      words = list(rng.choice(fillers, size=int(rng.integers(2, 9))))
      words.append(str(rng.choice(POSITIVE if label else NEGATIVE)))
      split = "test" if i < n // 4 else "train"
      f.write(json.dumps({"text": " ".join(words), "label": label, "split": split}) + "\n")
  return path


def preference_jsonl(path: Path, n: int, seed: int = 0) -> Path:
  """Pairs of reviews of one prompt: the chosen response ends with a positive word, the rejected one
  with a negative word (a reward of the last token can learn it); a quarter is the test split."""
  rng = np.random.default_rng(seed)
  fillers = WORDS[6:]

  def response(words):
    return " " + " ".join([*rng.choice(fillers, size=int(rng.integers(1, 5))), str(rng.choice(words))])

  with open(path, "w") as f:
    for i in range(n):
      prompt = " ".join(rng.choice(fillers, size=int(rng.integers(1, 4))))
      split = "test" if i < n // 4 else "train"
      f.write(json.dumps({"prompt": prompt, "chosen": response(POSITIVE), "rejected": response(NEGATIVE),
                          "split": split}) + "\n")
  return path
