"""Run a sweep on a Cloud TPU VM slice: create or reuse it, install this project on every worker,
run launch/main.py on all workers at once, stream worker 0's output, delete the VM.

    python launch/tpu_vm.py up --name=w2s --zone=us-central2-b --accelerator-type=v4-16 \\
        --config=configs/demo.py --workdir=gs://my-bucket/w2s/demo --delete-after -- --config.wandb.mode=auto
    python launch/tpu_vm.py create|install|run|status|logs|delete --name=w2s --zone=us-central2-b ...
    python launch/tpu_vm.py up ... --dry-run          # print every command, one per line; run none

Every step is a `gcloud compute tpus tpu-vm ...` command (docs/tpu_pods.md walks through a pod run):
- `create` describes the VM first and reuses it when it exists with the same accelerator type;
- `install` copies this checkout (its tracked and untracked-but-not-ignored files, as a tarball)
  to every worker with `scp --worker=all`, or clones `--git-url` there, then makes a venv and
  runs `pip install -e '.[tpu]'` on each;
- `run` starts the same `python launch/main.py --config=... --workdir=... --distributed ...` on all
  workers through `ssh --worker=all --command=...`. Worker 0's output streams here (tee'd to its
  log); the other workers write theirs to ~/w2s_jax_logs/ on their own VM (`logs --worker=K` shows
  them), so the terminal shows one run, not N interleaved copies of it;
- `delete` (or `--delete-after` on `run`/`up`) tears the VM down.

A multi-host slice's workers have their own local disks, so `run` refuses a local --workdir there
unless `--allow-local-workdir` (a filesystem mounted on every worker): the hosts must share the
stage store (docs/multihost.md). WANDB_API_KEY and HF_TOKEN are passed to the workers from this
environment when set, and are never printed (`WANDB_API_KEY=***`).
"""

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo root, when run from a checkout

from w2s_jax import redaction  # noqa: E402
from w2s_jax.errors import UserError  # noqa: E402

TPU_VM = ("gcloud", "compute", "tpus", "tpu-vm")
REMOTE_DIR = "w2s_jax"  # the project on each worker, relative to the home directory
REMOTE_ARCHIVE = "w2s_jax.tar.gz"
REMOTE_LOGS = "w2s_jax_logs"
PASSED_SECRETS = ("WANDB_API_KEY", "HF_TOKEN")  # given to the workers when set here; shown as ***
MASK = "***"
# The worker's index in its slice, from the TPU VM's metadata server; hostnames end in -w-N as a fallback.
WORKER_NUMBER_URL = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number"


# --- accelerator types ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Family:
  """One TPU generation as gcloud spells its accelerator types: PREFIX-N."""
  prefix: str
  counts_cores: bool  # v4 and v5p count TensorCores (2 per chip) in N; v5e and v6e count chips
  chips_per_host: int
  software_version: str  # the documented base image for JAX (cloud.google.com/tpu/docs/runtimes)
  sizes: tuple[int, ...] | None  # the N that exist, where they are a short list
  max_n: int


# Hosts (= TPU VM workers) per slice, from the Cloud TPU docs (checked 2026):
# - v4, v5p: 4 chips (8 TensorCores) per host; v4-8 / v5p-8 is one host, v4-16 / v5p-16 two.
# - v5e (v5litepod), v6e: 8 chips per host; slices of 1, 4 and 8 chips are one VM, 16 chips two hosts.
#   The v5e docs' table counts physical hosts (4x4 -> 2, 16x16 -> 32); where the API splits a
#   multi-host v5e/v6e slice into smaller VMs the count is higher, never 1, and nothing here needs
#   more than "one host or several": --worker=all reaches however many workers the slice has.
FAMILIES = {f.prefix: f for f in (
    Family("v4", counts_cores=True, chips_per_host=4, software_version="tpu-ubuntu2204-base", sizes=None,
           max_n=8192),
    Family("v5p", counts_cores=True, chips_per_host=4, software_version="v2-alpha-tpuv5", sizes=None,
           max_n=17920),
    Family("v5litepod", counts_cores=False, chips_per_host=8, software_version="v2-alpha-tpuv5-lite",
           sizes=(1, 4, 8, 16, 32, 64, 128, 256), max_n=256),
    Family("v6e", counts_cores=False, chips_per_host=8, software_version="v2-alpha-tpuv6e",
           sizes=(1, 4, 8, 16, 32, 64, 128, 256), max_n=256),
)}
KNOWN_TYPES = ("v4-N and v5p-N (N TensorCores: a multiple of 8), v5litepod-N and v6e-N "
               "(N chips: 1, 4, 8, 16, ..., 256)")


@dataclasses.dataclass(frozen=True)
class Slice:
  accelerator_type: str
  family: Family
  chips: int
  hosts: int


def parse_slice(accelerator_type: str) -> Slice:
  """The slice an accelerator type names, or a one-line UserError saying which types exist."""
  match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", accelerator_type)
  prefix = match.group(1) if match else accelerator_type
  if prefix == "v5e":
    raise UserError(f"accelerator type {accelerator_type!r}: gcloud calls v5e 'v5litepod', "
                    f"e.g. --accelerator-type=v5litepod-{match.group(2)}")
  if not match or prefix not in FAMILIES:
    raise UserError(f"unknown accelerator type {accelerator_type!r}; give one of {KNOWN_TYPES}")
  family, n = FAMILIES[prefix], int(match.group(2))
  valid = n in family.sizes if family.sizes else (n % 8 == 0 and 8 <= n <= family.max_n)
  if not valid:
    raise UserError(f"accelerator type {accelerator_type!r} does not exist; give one of {KNOWN_TYPES}")
  chips = n // 2 if family.counts_cores else n
  return Slice(accelerator_type, family, chips, hosts=max(1, chips // family.chips_per_host))


# --- commands ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Command:
  """A command to run (`argv`) and how it is printed (`shown`: shell-quoted, its secrets masked)."""
  argv: tuple[str, ...]
  shown: str


def command(argv: list[str], masked_argv: list[str] | None = None) -> Command:
  # Secrets that are not ours to pass (a token pasted into a --config.* value) are redacted as in a run's files.
  return Command(tuple(argv), redaction.redact(shlex.join(masked_argv or argv)))


@dataclasses.dataclass(frozen=True)
class Pod:
  name: str
  zone: str
  project: str | None

  def gcloud(self, verb: str, *args: str) -> list[str]:
    """`gcloud compute tpus tpu-vm VERB NAME --zone=... [--project=...] ARGS` (scp names the VM in its args)."""
    target = [] if verb == "scp" else [self.name]
    project = [f"--project={self.project}"] if self.project else []
    return [*TPU_VM, verb, *target, f"--zone={self.zone}", *project, *args]


def describe_command(pod: Pod, fmt: str | None = None) -> Command:
  return command(pod.gcloud("describe", *([f"--format={fmt}"] if fmt else [])))


def create_command(pod: Pod, slice_: Slice, version: str | None, provisioning: str | None) -> Command:
  flags = [f"--accelerator-type={slice_.accelerator_type}", f"--version={version or slice_.family.software_version}"]
  return command(pod.gcloud("create", *flags, *([f"--{provisioning}"] if provisioning else [])))


def delete_command(pod: Pod) -> Command:
  return command(pod.gcloud("delete", "--quiet"))  # --quiet: no prompt; `delete` itself is the confirmation


def on_all_workers(pod: Pod, script: list[str], masked_script: list[str] | None = None) -> Command:
  """`ssh --worker=all` running `script`'s lines in bash (for pipefail), on every worker at once."""
  def ssh(lines):
    return pod.gcloud("ssh", "--worker=all", f"--command=bash -c {shlex.quote('; '.join(lines))}")
  return command(ssh(script), ssh(masked_script) if masked_script else None)


def python_setup(python: str) -> str:
  # The base images ship Ubuntu 22.04's Python 3.10; the project needs 3.11+, which its apt has.
  return (f"command -v {python} >/dev/null || {{ sudo apt-get update -qq && "
          f"sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {python} {python}-venv; }}")


def install_script(python: str, git_url: str | None, git_ref: str, extras: str = "tpu") -> list[str]:
  home_dir = f'"$HOME/{REMOTE_DIR}"'
  if git_url:
    fetch = [f"[ -d {home_dir}/.git ] || git clone --quiet {shlex.quote(git_url)} {home_dir}",
             f"git -C {home_dir} fetch --quiet origin {shlex.quote(git_ref)}",
             f"git -C {home_dir} checkout --quiet --detach FETCH_HEAD"]
  else:  # unpacked over the last install: a workdir or venv kept inside it survives a reinstall
    fetch = [f"mkdir -p {home_dir}", f'tar -xzf "$HOME/{REMOTE_ARCHIVE}" -C {home_dir}']
  return ["set -euo pipefail", python_setup(python), *fetch, f"cd {home_dir}",
          f"[ -x .venv/bin/python ] || {python} -m venv .venv",
          ".venv/bin/python -m pip install -q --upgrade pip",
          f'.venv/bin/python -m pip install -q -e ".[{extras}]"',
          '.venv/bin/python -c "import w2s_jax, jax; print(jax.__version__)"']


def main_argv(slice_: Slice, config: str, workdir: str, extra: list[str]) -> list[str]:
  """The launch/main.py command line every worker runs; --distributed joins the hosts (jax.distributed)."""
  for flag in extra:
    if flag.split("=")[0] in ("--workdir", "--config", "--distributed"):
      raise UserError(f"{flag.split('=')[0]} is set by tpu_vm.py; give it as tpu_vm.py's own flag, not after '--'")
  distributed = ["--distributed"] if slice_.hosts > 1 else []
  return ["launch/main.py", f"--config={config}", f"--workdir={workdir}", *distributed, *extra]


def run_script(main: list[str], secrets: dict[str, str]) -> list[str]:
  """The bash lines of a run on one worker: worker 0 streams (and logs); the others only log."""
  main_cmd = shlex.join([".venv/bin/python", *main])
  log = f'"$HOME/{REMOTE_LOGS}/$(date -u +%Y%m%dT%H%M%SZ)-worker${{worker}}.log"'
  return ["set -euo pipefail", f'cd "$HOME/{REMOTE_DIR}"', "export PYTHONUNBUFFERED=1",
          *[f"export {name}={value}" for name, value in secrets.items()],
          f'worker=$(curl -sf -H "Metadata-Flavor: Google" {WORKER_NUMBER_URL} || '
          'hostname | sed -n "s/.*-w-\\([0-9][0-9]*\\)\\$/\\1/p")',
          # An unknown index streams too: interleaved output is better than none.
          'worker="${worker:-0}"', f'mkdir -p "$HOME/{REMOTE_LOGS}"', f"log={log}",
          f'if [ "$worker" = 0 ]; then {main_cmd} 2>&1 | tee "$log"; else {main_cmd} > "$log" 2>&1; fi']


def run_command(pod: Pod, main: list[str]) -> Command:
  passed = {name: os.environ[name] for name in PASSED_SECRETS if os.environ.get(name)}
  real = run_script(main, {name: shlex.quote(value) for name, value in passed.items()})
  return on_all_workers(pod, real, run_script(main, {name: MASK for name in passed}))


def logs_command(pod: Pod, worker: int, lines: int) -> Command:
  script = f'tail -n {lines} "$(ls -t "$HOME/{REMOTE_LOGS}"/*-worker{worker}.log | head -n 1)"'
  return command(pod.gcloud("ssh", f"--worker={worker}", f"--command={script}"))


def check_workdir(workdir: str, slice_: Slice, allow_local: bool) -> None:
  if workdir.startswith("gs:/") and not re.match(r"gs://[^/]+", workdir):
    raise UserError(f"--workdir={workdir} is not a gs://bucket/path URL; give e.g. gs://my-bucket/w2s/run1")
  if slice_.hosts > 1 and not workdir.startswith("gs://") and not allow_local:
    raise UserError(f"--workdir={workdir} is local, but a {slice_.accelerator_type} slice has {slice_.hosts} "
                    "hosts, each with its own disk, which would not share the stage store; give "
                    "--workdir=gs://bucket/path (or --allow-local-workdir for a filesystem mounted on every worker)")


# --- the checkout, packed for scp ----------------------------------------------------------------

def local_archive(name: str) -> Path:
  return Path(tempfile.gettempdir()) / f"w2s_jax-{name}.tar.gz"


def pack_checkout(repo: Path, archive: Path) -> int:
  """Pack what git would ship (tracked, and untracked but not ignored: no .venv, no workdirs); returns the count."""
  listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          capture_output=True, text=True)
  if listed.returncode != 0:
    raise UserError(f"{repo} is not a git checkout ({listed.stderr.strip().splitlines()[-1:]}); "
                    "give --git-url=URL to clone the project on the workers instead")
  files = [f for f in listed.stdout.split("\0") if f and (repo / f).is_file()]  # a deleted file stays listed
  with tarfile.open(archive, "w:gz") as tar:
    for f in files:
      tar.add(repo / f, arcname=f)
  return len(files)


# --- running them --------------------------------------------------------------------------------

class Runner:
  """Prints each command (dry run) or runs it, stopping at the first failure with one line."""

  def __init__(self, dry_run: bool):
    self.dry_run = dry_run

  def note(self, text: str) -> None:
    # In a dry run notes are shell comments, so the printed plan stays a script.
    print(f"# {text}" if self.dry_run else text, file=sys.stdout if self.dry_run else sys.stderr, flush=True)

  def __call__(self, cmd: Command, *, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    if self.dry_run:
      print(cmd.shown, flush=True)
      return subprocess.CompletedProcess(cmd.argv, 0, "", "")
    if not capture:
      print(f"+ {cmd.shown}", file=sys.stderr, flush=True)
    try:
      done = subprocess.run(cmd.argv, capture_output=capture, text=True)
    except FileNotFoundError:
      raise UserError(f"{cmd.argv[0]} is not on PATH; install the Google Cloud CLI "
                      "(cloud.google.com/sdk/docs/install) and run `gcloud auth login`") from None
    if check and done.returncode != 0:
      raise UserError(f"command failed with exit code {done.returncode}: {cmd.shown}")
    return done


def ensure_vm(run: Runner, pod: Pod, slice_: Slice, version: str | None, provisioning: str | None) -> None:
  """Create the VM, or reuse it where one of that name exists with the same accelerator type."""
  found = run(describe_command(pod, "value(acceleratorType)"), capture=True, check=False)
  create = create_command(pod, slice_, version, provisioning)
  if run.dry_run:
    run.note(f"the create below runs only if the describe above finds no VM {pod.name!r}")
    run(create)
    return
  existing = found.stdout.strip().rsplit("/", 1)[-1]  # the API may give a full resource path
  if found.returncode != 0:
    run.note(f"creating {slice_.accelerator_type} ({slice_.chips} chips, {slice_.hosts} host(s)) as {pod.name!r}")
    run(create)
  elif existing and existing != slice_.accelerator_type:
    raise UserError(f"TPU VM {pod.name!r} exists in {pod.zone} as {existing}, not {slice_.accelerator_type}; "
                    "delete it or choose another --name")
  else:
    run.note(f"reusing TPU VM {pod.name!r} ({existing or slice_.accelerator_type}) in {pod.zone}")


def check_install_flags(args) -> None:
  if not re.fullmatch(r"python3\.\d+", args.python):
    raise UserError(f"--python={args.python}: give an interpreter named python3.N (e.g. python3.11), as apt names it")
  if not re.fullmatch(r"[a-z0-9_-]+(,[a-z0-9_-]+)*", args.extras):
    raise UserError(f"--extras={args.extras}: give setup.cfg extras separated by commas, e.g. tpu,demo")


def install(run: Runner, pod: Pod, args) -> None:
  if not args.git_url:
    archive = local_archive(pod.name)
    if run.dry_run:
      run.note(f"pack {REPO}'s files (git ls-files --cached --others --exclude-standard) into {archive}")
    else:
      run.note(f"packed {pack_checkout(REPO, archive)} files of {REPO} into {archive}")
    run(command(pod.gcloud("scp", str(archive), f"{pod.name}:{REMOTE_ARCHIVE}", "--worker=all")))
  run(on_all_workers(pod, install_script(args.python, args.git_url, args.git_ref, args.extras)))


def launch_run(run: Runner, pod: Pod, slice_: Slice, args) -> None:
  check_workdir(args.workdir, slice_, args.allow_local_workdir)
  main = main_argv(slice_, args.config, args.workdir, args.main_flags)
  try:
    run(run_command(pod, main))
  except UserError as e:
    raise UserError(f"{e} (the other workers' logs: `python launch/tpu_vm.py logs --name={pod.name} "
                    f"--zone={pod.zone} --worker=K`)") from None


def run_then_delete(run: Runner, pod: Pod, slice_: Slice, args) -> None:
  """`run`, then with --delete-after the VM's deletion whatever the run's outcome (a failed run's VM costs the same)."""
  try:
    launch_run(run, pod, slice_, args)
  except UserError as failed:
    if args.delete_after:
      try:
        run(delete_command(pod))
      except UserError as also:
        raise UserError(f"{failed}; and deleting the VM failed too: {also}") from None
    raise
  if args.delete_after:
    run(delete_command(pod))


# --- the command line ----------------------------------------------------------------------------

class OneLineParser(argparse.ArgumentParser):
  """argparse whose errors are our one-line UserError instead of usage text and exit 2."""

  def error(self, message):
    raise UserError(f"{message}; see `python launch/{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--name", required=True, help="the TPU VM's name")
  common.add_argument("--zone", required=True, help="e.g. us-central2-b (has v4); `gcloud compute tpus accelerator-types list "
                      "--zone=ZONE` lists a zone's types")
  common.add_argument("--project", help="the Google Cloud project (default: gcloud's core/project)")
  common.add_argument("--dry-run", action="store_true", help="print every command, one per line; run none")

  def accelerator(p):
    p.add_argument("--accelerator-type", required=True, help=KNOWN_TYPES)

  def create_flags(p):
    p.add_argument("--version", "--runtime-version", dest="version",
                   help="TPU software version (default: the documented JAX base image of the generation)")
    provisioning = p.add_mutually_exclusive_group()
    for kind, text in (("spot", "Spot VM: cheaper, can be reclaimed at any time"),
                       ("preemptible", "the older preemptible VM (v4 and earlier)"),
                       ("reserved", "from this project's reservation")):
      provisioning.add_argument(f"--{kind}", dest="provisioning", action="store_const", const=kind, help=text)

  def install_flags(p):
    p.add_argument("--git-url", help="clone this repository on the workers instead of copying this checkout")
    p.add_argument("--git-ref", default="HEAD", help="branch, tag or commit of --git-url (default: its HEAD)")
    p.add_argument("--python", default="python3.11", help="the workers' interpreter (installed with apt if missing)")
    p.add_argument("--extras", default="tpu", help="setup.cfg extras to install (default: tpu; the demo: tpu,demo)")

  def run_flags(p):
    p.add_argument("--config", required=True, help="launch/main.py's --config, e.g. configs/demo.py")
    p.add_argument("--workdir", required=True, help="gs://bucket/path: shared by every worker")
    p.add_argument("--allow-local-workdir", action="store_true",
                   help="accept a local --workdir on a multi-host slice (a filesystem mounted on every worker)")
    p.add_argument("--delete-after", action="store_true", help="delete the VM when the run ends, even if it failed")

  parser = OneLineParser(prog="tpu_vm.py", description=__doc__.split("\n\n")[0],
                         epilog="flags after '--' go to launch/main.py (run, up)")
  sub = parser.add_subparsers(dest="subcommand", required=True, parser_class=OneLineParser)
  for name, flag_groups, text in (
      ("create", (accelerator, create_flags), "create the TPU VM, or reuse one of that name"),
      ("install", (install_flags,), "copy (or clone) the project to every worker and pip install it"),
      ("run", (accelerator, run_flags), "run launch/main.py on every worker; stream worker 0"),
      ("up", (accelerator, create_flags, install_flags, run_flags), "create, install and run"),
      ("status", (), "describe the TPU VM"),
      ("logs", (), "show the end of a worker's latest run log"),
      ("delete", (), "delete the TPU VM")):
    p = sub.add_parser(name, parents=[common], help=text, description=text)
    for add in flag_groups:
      add(p)
    if name == "logs":
      p.add_argument("--worker", type=int, default=0)
      p.add_argument("--lines", type=int, default=100)
  return parser


def main(argv: list[str]) -> int:
  # Everything after the first '--' is launch/main.py's, so that its --config.* overrides pass untouched.
  ours, main_flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
  try:
    args = build_parser().parse_args(ours)
    if main_flags and args.subcommand not in ("run", "up"):
      raise UserError(f"flags after '--' are launch/main.py's and only `run` and `up` take them, not {args.subcommand}")
    args.main_flags = main_flags
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", args.name):
      raise UserError(f"--name={args.name}: a TPU VM name is lowercase letters, digits and '-', starting with a letter")
    pod, run = Pod(args.name, args.zone, args.project), Runner(args.dry_run)
    slice_ = parse_slice(args.accelerator_type) if hasattr(args, "accelerator_type") else None
    # Bad install and run flags fail before a VM is paid for.
    if args.subcommand in ("install", "up"):
      check_install_flags(args)
    if slice_ and args.subcommand in ("run", "up"):
      check_workdir(args.workdir, slice_, args.allow_local_workdir)
      main_argv(slice_, args.config, args.workdir, main_flags)
    if args.subcommand == "status":
      run(describe_command(pod))
    elif args.subcommand == "logs":
      run(logs_command(pod, args.worker, args.lines))
    elif args.subcommand == "delete":
      run(delete_command(pod))
    else:
      if args.subcommand in ("create", "up"):
        ensure_vm(run, pod, slice_, args.version, args.provisioning)
      if args.subcommand in ("install", "up"):
        install(run, pod, args)
      if args.subcommand in ("run", "up"):
        run_then_delete(run, pod, slice_, args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
