"""Every bad input ends in one line on stderr that names the cause and the fix: launch/main.py end to end.

Each case runs the real command line in a fresh process (no test conftest: one CPU device, the
network as the process finds it) on a tiny linear-probe sweep, and checks the whole contract:
exit code != 0, exactly one line on stderr, no traceback, and the cause named in it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import tiny_models

REPO = Path(__file__).resolve().parents[1]

CONFIG = '''
from w2s_jax.config_base import base, finalize, model


def get_config(arg=None):
  c = base()
  c.task = "jsonl:{task}"
  c.n_train, c.n_test, c.max_length = 90, 30, 32  # all of the task's 90 + 30
  c.models.update(dict(weak=model("{weak}", 3e-4), strong=model("{strong}", 3e-3)))
  c.model_order = ("weak", "strong")
  c.methods = ("xent",)
  c.train.batch_size, c.train.epochs, c.train.linear_probe = 16, 1.0, True
  c.wandb.mode = "disabled"
  return finalize(c)
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_input")
  assets = tiny_models.gpt2_pair(root, strong_embd=16, strong_layers=1, n_examples=120)
  (root / "tiny_config.py").write_text(CONFIG.format(**{k: str(v) for k, v in assets.items()}))
  return {**assets, "root": root, "config": root / "tiny_config.py"}


def launch(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
  env = {**{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "WANDB_"))}, **(env or {})}
  return subprocess.run([sys.executable, "launch/main.py", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def assert_one_line(done: subprocess.CompletedProcess, *expected: str) -> str:
  lines = done.stderr.strip().splitlines()
  assert done.returncode != 0, done.stderr
  assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
  for text in expected:
    assert text in lines[0], lines[0]
  return lines[0]


def write(path: Path, text: str) -> Path:
  path.write_text(text)
  return path


def jsonl(*records) -> str:
  return "".join(json.dumps(r) + "\n" for r in records)


def other_architecture(root: Path, weak: Path) -> Path:
  """A GPT-2 config.json over a Llama's weights: a checkpoint of another architecture."""
  directory = tiny_models.save_llama(root / "llama_as_gpt2", hidden=16, layers=1)
  shutil.copy(weak / "config.json", directory / "config.json")
  return directory


def without_tokenizer(root: Path, weak: Path) -> Path:
  directory = root / "no_tokenizer"
  shutil.copytree(weak, directory, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*", "vocab*"),
                  dirs_exist_ok=True)
  return directory


# name -> (extra command-line arguments, given the tiny assets; what the line must name)
CASES = {
    "unknown task": (lambda t: ["--config.task=no_such_task"], ["unknown task 'no_such_task'"]),
    "unknown model": (lambda t: ["--config.models.weak.checkpoint=offline:no_such_model"],
                      ["unknown offline model 'no_such_model'"]),
    "unknown method": (lambda t: ["--config.methods=('no_such_method',)"], ["unknown method 'no_such_method'"]),
    "unknown config field": (lambda t: ["--config.no_such_field=1"], ["no_such_field"]),
    "seeds of the wrong type": (lambda t: ["--config.seeds=banana"], ["config.seeds=('banana',)", "ints"]),
    "negative n_train": (lambda t: ["--config.n_train=-5"], ["config.n_train=-5", "positive"]),
    "n_train larger than the data": (lambda t: ["--config.n_train=100000"],
                                     ["train has 90 usable examples, fewer than n_train=100,000"]),
    "malformed jsonl": (lambda t: [f"--config.task=jsonl:{write(t['root'] / 'bad.jsonl', jsonl({'text': 'a', 'label': 1}) + '{oops')}"],
                        ["bad.jsonl, line 2: not valid JSON"]),
    "malformed csv": (lambda t: [f"--config.task=csv:{write(t['root'] / 'bad.csv', 'text,label' + chr(10) + 'a,1,3' + chr(10))}"],
                      ["bad.csv, line 2: more fields than the header"]),
    "a label that is not 0/1": (lambda t: [f"--config.task=jsonl:{write(t['root'] / 'label.jsonl', jsonl({'text': 'a', 'label': 2}))}"],
                                ["label.jsonl, line 1: label must be 0 or 1, got 2"]),
    "an empty split": (lambda t: ["--config.n_at_most=True", f"--config.task=jsonl:{write(t['root'] / 'no_test.jsonl', jsonl(*({'text': f'w{i}', 'label': i % 2, 'split': 'train'} for i in range(8))))}"],
                       ["no record has split \"test\""]),
    "a missing tokenizer": (lambda t: [f"--config.models.weak.checkpoint={without_tokenizer(t['root'], t['weak'])}"],
                            ["no usable tokenizer in"]),
    "a checkpoint of another architecture": (
        lambda t: [f"--config.models.weak.checkpoint={other_architecture(t['root'], t['weak'])}"],
        ["does not match architecture"]),
    "a mesh that does not divide the devices": (lambda t: ["--config.mesh.data=3"], ["mesh: data=3", "devices"]),
    "a model too long for max_length": (lambda t: ["--config.max_length=512"],
                                        ["config.max_length=512 is longer than weak reads (64 tokens"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_naming_the_cause(tiny, tmp_path, case):
  extra, expected = CASES[case]
  assert_one_line(launch(f"--config={tiny['config']}", f"--workdir={tmp_path / 'work'}", *extra(tiny)), *expected)


def test_a_workdir_that_is_not_writable(tiny, tmp_path):
  a_file = write(tmp_path / "a_file", "")
  assert_one_line(launch(f"--config={tiny['config']}", f"--workdir={a_file / 'work'}"),
                  f"workdir {a_file / 'work'} is not writable", "--workdir")


def test_a_hub_id_without_network_fails_at_once_from_the_cache(tiny, tmp_path):
  """An unreachable hub (here: a closed local port) puts the HF libraries offline before they load:
  the miss is our line, with none of their retry warnings before it."""
  env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf_home")}
  model = launch(f"--config={tiny['config']}", f"--workdir={tmp_path / 'a'}",
                 "--config.models.weak.checkpoint=openai-community/gpt2", env=env)
  assert_one_line(model, "model 'openai-community/gpt2' is neither a local directory nor in the Hugging Face cache")
  dataset = launch(f"--config={tiny['config']}", f"--workdir={tmp_path / 'b'}", "--config.task=sciq", env=env)
  assert_one_line(dataset, "task 'sciq'", "is not in the local cache", "HF_DATASETS_OFFLINE")


def test_a_second_run_in_a_workdir_is_refused_and_a_dead_runs_lock_taken_over(tiny, tmp_path):
  workdir = tmp_path / "work"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from w2s_jax import workdir\n"
       "with workdir.claim(sys.argv[1]):\n  print('held', flush=True); time.sleep(600)", str(workdir)],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    second = launch(f"--config={tiny['config']}", f"--workdir={workdir}")
    assert_one_line(second, f"workdir {workdir} is in use by pid {holder.pid} on host {os.uname().nodename}")
    assert not (workdir / "stages").exists()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  record = json.loads((workdir / ".lock").read_text())
  assert record["pid"] == holder.pid  # a dead process's record stays behind...
  done = launch(f"--config={tiny['config']}", f"--workdir={workdir}")  # ...and holds no lock
  assert done.returncode == 0, done.stderr
  assert (workdir / "results.json").exists()


def test_nan_loss_stops_its_stage_in_one_line_and_keeps_the_finished_ones(tiny, tmp_path):
  workdir = tmp_path / "work"
  nan = launch(f"--config={tiny['config']}", f"--workdir={workdir}", "--config.models.strong.lr=1e38")
  line = assert_one_line(nan, "ground_truth", "strong", "the loss became", "at step")
  assert "lower the learning rate" in line
  finished = {d.name: d.stat().st_mtime_ns for d in (workdir / "stages").iterdir() if (d / "result.json").exists()}
  assert any(name.startswith("ground_truth-") for name in finished)  # the weak model's, before the NaN
  time.sleep(0.01)
  done = launch(f"--config={tiny['config']}", f"--workdir={workdir}")
  assert done.returncode == 0, done.stderr
  for name, mtime in finished.items():  # loaded, not recomputed
    assert (workdir / "stages" / name).stat().st_mtime_ns == mtime


SHIPPED = [("chess.py", a) for a in ("", "small", "runlocal")] + [("demo.py", a) for a in ("", "runlocal")] + [
    ("finetune.py", a) for a in ("", "runlocal", "probes", "mpnet")] + [("methods.py", a) for a in ("", "runlocal")] + [
    ("nlp.py", a) for a in ("", "gpt2", "runlocal")] + [("reward.py", a) for a in ("", "encoders", "hh", "runlocal")] + [
    ("zoo.py", a) for a in ("", "small", "runlocal")]


@pytest.mark.parametrize("file,arg", SHIPPED)
def test_every_shipped_config_passes_the_value_checks(file, arg):
  import importlib.util
  from w2s_jax import config_check
  spec = importlib.util.spec_from_file_location(f"config_{file[:-3]}", REPO / "configs" / file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config_check.check(module.get_config(arg))


@pytest.mark.parametrize("field,value,named", [
    ("seeds", (0, "1"), "config.seeds=(0, '1') must be a non-empty tuple of distinct ints"),
    ("seeds", (0, 0), "distinct"), ("train.epochs", 0.0, "config.train.epochs=0.0 must be a positive number"),
    ("search.val_frac", 1.0, "strictly between 0 and 1"), ("models.weak.dtype", "float16", "'float32' or 'bfloat16'"),
    ("train.checkpoint_every", -1, "an int >= 0")])
def test_a_value_out_of_its_range_names_the_field_and_an_example(field, value, named):
  from w2s_jax import config_check
  from w2s_jax.config_base import base, model
  from w2s_jax.errors import UserError
  c = base()
  c.models.weak = model("offline:all-minilm-l6-v2", 1e-4)
  node = c
  *parents, last = field.split(".")
  for p in parents:
    node = node[p]
  node[last] = value
  with pytest.raises(UserError, match="e.g. --config.") as error:
    config_check.check(c)
  assert named in str(error.value)


def test_transformers_says_nothing_of_a_missing_pytorch_it_is_not_asked_for():
  """Our models are Flax; transformers serves tokenizers. Its banner on a machine without torch
  ("PyTorch was not found...") would stand above our one line (here torch is hidden from it)."""
  code = "import sys; sys.modules['torch'] = None\nimport w2s_jax, transformers\ntransformers.AutoTokenizer"
  env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0 and done.stderr == "", done.stderr
  banner = subprocess.run([sys.executable, "-c", code.replace("import w2s_jax, ", "import ")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert "PyTorch was not found" in banner.stderr  # what it says without w2s_jax first
