"""The one exception type that the command line turns into a one-line message.

Anything a user can cause (a wrong config key, a missing dataset, a label that is
not 0/1, a tokenizer that does not match the model, a NaN loss) raises
`UserError` with a message naming the cause and the fix. `launch/main.py`
prints it as a single line on stderr and exits non-zero, with no traceback.
"""


class UserError(Exception):
  """An error caused by the user's input, with a one-line message saying how to fix it."""
