"""Methods: what a weak-to-strong study varies, each a value registered by name.

A method has a *kind*, the part of a student's training it decides:

  supervisor  who labels half B: the weak model, or an ensemble of weak models (averaged)
  labels      a transform of the weak labels: soft (the paper), hard (argmax)
  examples    which half-B examples count, and how much: all, or the least confident dropped
              or down-weighted
  loss        the student's loss: xent, logconf, product, entropy, window, ...
  selection   which checkpoint is kept: the last, or the best on a weak-labelled validation
              part (early stopping), or the best against ground truth (an ORACLE)
  rounds      how many students train in turn: one, or strong-to-strong (each student
              relabels half B for a fresh one)

A *recipe* is what one student stage runs: one method of each kind. The config names it
in `config.methods` as methods of different kinds joined by '+', e.g. 'logconf',
'xent+weak_auroc', 'ensemble+hard+xent'; a kind it does not name takes its default
(DEFAULTS). A method's options live in `config.method_options.<name>` (filled from the
registered defaults by `config_base`), and the recipe and the options of each of its
methods enter the key of every stage that runs it (`stage_keys.py`).

Adding a method is one small module that calls `register(...)`, imported below; the
protocol (`w2s_jax/protocol/`) calls it through its kind's interface and never names it.
`python launch/main.py --list_methods` prints every registered method, one line each.
"""

import dataclasses
from typing import Any

from w2s_jax.errors import UserError

# The kinds in the order a student's data flows through them.
KINDS = ("supervisor", "labels", "examples", "loss", "selection", "rounds")
DEFAULTS = {"supervisor": "single", "labels": "soft", "examples": "all", "loss": "xent", "selection": "final",
            "rounds": "one_student"}


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered method: `impl` is what its kind's interface calls (see each kind's module)."""
  name: str
  kind: str
  summary: str                     # one line, for --list_methods and the docs
  impl: Any
  options: dict[str, Any] = dataclasses.field(default_factory=dict)  # defaults of config.method_options.<name>
  oracle: bool = False             # uses ground truth of half B: for analysis only, marked in every table
  source: str = ""                 # where it comes from (paper, repository)


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
  if method.kind not in KINDS:
    raise ValueError(f"method {method.name!r}: kind {method.kind!r} is not one of {KINDS}")
  if method.name in REGISTRY or "+" in method.name:
    raise ValueError(f"method name {method.name!r} is taken or contains '+'")
  REGISTRY[method.name] = method
  return method


def get(name: str) -> Method:
  if name not in REGISTRY:
    raise UserError(f"unknown method {name!r}; `python launch/main.py --list_methods` lists them: "
                    f"{', '.join(sorted(REGISTRY))}")
  return REGISTRY[name]


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One method of each kind: what one student runs. `name` is how the config spells it."""
  name: str
  methods: dict[str, Method]       # kind -> method, every kind present
  options: dict[str, dict[str, Any]]  # method name -> its options (config.method_options.<name>)

  def __getitem__(self, kind: str) -> Method:
    return self.methods[kind]

  def options_of(self, kind: str) -> dict[str, Any]:
    return dict(self.options.get(self.methods[kind].name, {}))

  @property
  def oracle(self) -> bool:
    return any(m.oracle for m in self.methods.values())

  @property
  def named(self) -> tuple[str, ...]:
    """The names of every method of the recipe (the defaults too): their options enter the key."""
    return tuple(self.methods[kind].name for kind in KINDS)

  def per_student(self) -> "Recipe":
    """The recipe that each student of a multi-round recipe runs (rounds: one student each)."""
    methods = dict(self.methods, rounds=REGISTRY[DEFAULTS["rounds"]])
    return Recipe(self.name, methods, self.options)


def resolve(spec: str, method_options: dict[str, dict[str, Any]] | None = None) -> Recipe:
  """'xent+weak_auroc' -> a Recipe; one line naming the fix for an unknown name or two of one kind."""
  names = [n.strip() for n in str(spec).split("+")]
  chosen: dict[str, Method] = {}
  for name in names:
    method = get(name)
    if method.kind in chosen:
      raise UserError(f"method {spec!r} names two {method.kind} methods ({chosen[method.kind].name!r} and "
                      f"{name!r}); join methods of different kinds with '+'")
    chosen[method.kind] = method
  methods = {kind: chosen.get(kind) or REGISTRY[DEFAULTS[kind]] for kind in KINDS}
  options = {}
  for method in methods.values():
    if method_options is not None and method.options and method.name not in method_options:
      raise UserError(f"method {method.name!r} has options but config.method_options has no entry for it: "
                      "register it before the config is built (config_base.base() copies every method's options)")
    given = dict((method_options or {}).get(method.name, method.options))
    unknown = set(given) - set(method.options)
    if unknown:
      raise UserError(f"config.method_options.{method.name} has unknown options {sorted(unknown)}; "
                      f"known: {sorted(method.options)}")
    options[method.name] = {**method.options, **given}
  return Recipe("+".join(names), methods, options)


def default_options() -> dict[str, dict[str, Any]]:
  """{name: options} of every registered method with options: `config_base`'s method_options."""
  return {name: dict(m.options) for name, m in REGISTRY.items() if m.options}


def describe() -> list[str]:
  """One line per registered method, grouped by kind (`main.py --list_methods`)."""
  lines = []
  for kind in KINDS:
    for m in REGISTRY.values():
      if m.kind == kind:
        default = " (default)" if DEFAULTS[kind] == m.name else ""
        oracle = "ORACLE, for analysis only: " if m.oracle else ""
        lines.append(f"{kind:10s} {m.name:28s} {oracle}{m.summary}{default}")
  return lines


# Registration: each module registers its kind's methods when imported.
from w2s_jax.methods import supervisors, labels, examples, losses, selection, rounds  # noqa: E402,F401
