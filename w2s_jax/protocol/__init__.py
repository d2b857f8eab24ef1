"""The weak-to-strong protocol, a file per stage, each a function from a stage spec to a cached result.

  context.py        what every stage shares: the config, the stage store, the mesh, models
  features.py       a frozen backbone's pooled features (the cached linear probe)
  fitting.py        one fine-tune (or head fit) of a model on examples and targets
  ground_truth.py   a model trained on half A's ground truth: its test metrics, its half-B logits
  weak_labels.py    the supervisor's labels of half B, and what a student trains on
  weak_to_strong.py a student trained on weak labels, with a recipe of methods
  bootstrap.py      students in turn: bootstrapping chains and strong-to-strong rounds
  pgr.py            test metrics, PGR, the rows of results.json
  sweep.py          plan a config's stages, run them, write the results
"""
