"""Preference pairs for reward models: splitting dialogues, ordering pairs, reading users' rows.

A pair is a prompt and two responses, one of them chosen (`tasks.PreferenceExample`). The
chosen response goes into a random slot, so a model cannot learn the label from the order.

Anthropic HH-RLHF gives each pair as two whole dialogues that share everything but the last
Assistant turn; `split_at_last_assistant` recovers the prompt and the two responses.

A user's file (`jsonl:PATH`, read by `files.read_jsonl`) holds one pair per line:
`{"prompt": ..., "chosen": ..., "rejected": ...}`; `checked_row` validates one such row.
"""

import os
import random

from w2s_jax.data.tasks import PreferenceExample
from w2s_jax.errors import UserError

HH_ASSISTANT = "\n\nAssistant:"
FIELDS = ("chosen", "rejected")


def split_at_last_assistant(chosen: str, rejected: str) -> tuple[str, str, str] | None:
  """(prompt, chosen response, rejected response) of two HH-RLHF dialogues, or None.

  The prompt is the dialogue up to and including the last "\\n\\nAssistant:" that lies
  inside the two dialogues' common prefix; each response is the rest of its dialogue, with
  its leading space, so prompt + response is the dialogue as given. None when the dialogues
  share no Assistant turn, or when the two responses are the same text up to surrounding
  whitespace (no preference to learn).
  """
  shared = os.path.commonprefix([chosen, rejected])
  cut = shared.rfind(HH_ASSISTANT)
  if cut < 0:
    return None
  end = cut + len(HH_ASSISTANT)
  prompt, chosen_response, rejected_response = chosen[:end], chosen[end:], rejected[end:]
  if chosen_response.strip() == rejected_response.strip():
    return None
  return prompt, chosen_response, rejected_response


def make_pair(prompt: str, chosen: str, rejected: str, uid: int,
              rng: random.Random) -> PreferenceExample:
  """The pair with the chosen response in a slot drawn from `rng`; the label is that slot."""
  label = int(rng.random() < 0.5)
  responses = (rejected, chosen) if label else (chosen, rejected)
  return PreferenceExample(prompt=prompt, responses=responses, label=label, uid=uid)


def is_preference_row(record: dict) -> bool:
  """Whether a user's JSON record is a preference row (it has "chosen" or "rejected")."""
  return any(field in record for field in FIELDS)


def checked_row(record: dict, where: str) -> tuple[str, str, str]:
  """A user's preference row validated: (prompt, chosen, rejected); `where` is "PATH, line N"."""
  if "label" in record:
    # A label would say nothing the chosen/rejected fields do not, or contradict them.
    raise UserError(f"{where}: a preference row has no \"label\" (the chosen response is the "
                    "better one); drop the field")
  for field in FIELDS:
    if field not in record:
      raise UserError(f"{where}: missing field {field!r}; every preference line needs "
                      "\"chosen\" and \"rejected\"")
    value = record[field]
    if not isinstance(value, str) or not value.strip():
      raise UserError(f"{where}: \"{field}\" must be a non-empty string, got {value!r}")
  prompt = record.get("prompt", "")
  if not isinstance(prompt, str):
    raise UserError(f"{where}: \"prompt\" must be a string (it may be empty), got {prompt!r}")
  chosen, rejected = record["chosen"], record["rejected"]
  if chosen.strip() == rejected.strip():
    raise UserError(f"{where}: \"chosen\" and \"rejected\" are the same text: no preference "
                    "to learn; drop the row")
  return prompt, chosen, rejected
