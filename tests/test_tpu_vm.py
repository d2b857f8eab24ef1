"""launch/tpu_vm.py: the gcloud commands of a pod run, checked as printed (--dry-run) and as run.

No Google Cloud here: the real runs use a fake `gcloud` on PATH, a shell script that records each
call's argv and exits 0, or 3 for the verb named in $FAKE_GCLOUD_FAIL. The run script that each
worker executes is run by a real bash, in a fake home with a fake venv python and a fake `curl` that
plays the metadata server.
"""

import importlib.util
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("tpu_vm", REPO / "launch" / "tpu_vm.py")
tpu_vm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tpu_vm)

WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B key (40 hex digits)
POD = ["--name=w2s-pod", "--zone=us-central2-b", "--project=my-proj"]
MULTI_HOST = [*POD, "--accelerator-type=v4-16"]
RUN = ["--config=configs/demo.py", "--workdir=gs://my-bucket/w2s/demo"]
MAIN_FLAGS = ["--", "--config.seeds=(0, 1)", "--config.wandb.mode=auto"]
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
WHERE = ["--zone=us-central2-b", "--project=my-proj"]

FAKE_GCLOUD = """#!/bin/sh
n=$(ls "$FAKE_GCLOUD_CALLS" | wc -l)
printf '%s\\0' "$@" > "$FAKE_GCLOUD_CALLS/call-$(printf %03d "$n")"
for a in "$@"; do [ "$a" = "$FAKE_GCLOUD_FAIL" ] && exit 3; done
[ "$4" = describe ] && [ -n "$FAKE_DESCRIBE" ] && printf '%s\\n' "$FAKE_DESCRIBE"
exit 0
"""


def dry_run(capture, *argv):
  ours = list(argv[:argv.index("--")] if "--" in argv else argv)  # after '--' are main.py's flags
  code = tpu_vm.main([*ours, "--dry-run", *argv[len(ours):]])
  out, err = capture.readouterr()
  assert code == 0, err
  return [shlex.split(line) for line in out.splitlines() if not line.startswith("#")], out + err


def remote_script(argv):
  """The bash script an `ssh --worker=... --command=bash -c SCRIPT` command runs on the workers."""
  (command,) = [a for a in argv if a.startswith("--command=")]
  shell, flag, script = shlex.split(command.removeprefix("--command="))
  assert (shell, flag) == ("bash", "-c")
  return script


@pytest.fixture(autouse=True)  # every test: no test may reach the real gcloud, even by mistake
def fake_gcloud(tmp_path, monkeypatch):
  bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
  bin_dir.mkdir(), calls.mkdir()
  (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
  (bin_dir / "gcloud").chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_GCLOUD_CALLS", str(calls))
  monkeypatch.setenv("FAKE_GCLOUD_FAIL", "")
  monkeypatch.setenv("FAKE_DESCRIBE", "")
  monkeypatch.setattr(tpu_vm, "local_archive", lambda name: tmp_path / f"w2s_jax-{name}.tar.gz")

  def recorded():
    return [["gcloud", *p.read_bytes().decode().split("\0")[:-1]] for p in sorted(calls.iterdir())]
  return recorded


def test_hosts_per_accelerator_type():
  hosts = {t: tpu_vm.parse_slice(t).hosts for t in ("v4-8", "v4-16", "v4-32", "v5p-8", "v5p-16", "v5p-128",
                                                      "v5litepod-4", "v5litepod-8", "v5litepod-16", "v6e-8",
                                                      "v6e-16", "v6e-256")}
  assert hosts == {"v4-8": 1, "v4-16": 2, "v4-32": 4, "v5p-8": 1, "v5p-16": 2, "v5p-128": 16,
                   "v5litepod-4": 1, "v5litepod-8": 1, "v5litepod-16": 2, "v6e-8": 1, "v6e-16": 2, "v6e-256": 32}
  assert tpu_vm.parse_slice("v5p-128").chips == 64  # v4/v5p name TensorCores, 2 per chip


@pytest.mark.parametrize("accelerator_type, says", [
    ("v3-8", "unknown accelerator type 'v3-8'"), ("tpu-16", "unknown accelerator type"),
    ("v5e-8", "v5litepod-8"), ("v4-12", "'v4-12' does not exist"), ("v6e-2", "'v6e-2' does not exist")])
def test_bad_accelerator_type_is_one_line(capsys, accelerator_type, says):
  assert tpu_vm.main(["create", *POD, f"--accelerator-type={accelerator_type}", "--dry-run"]) == 1
  out, err = capsys.readouterr()
  assert out == "" and len(err.splitlines()) == 1 and says in err, err


def test_dry_run_of_a_multi_host_pod(capsys, monkeypatch):
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  monkeypatch.delenv("HF_TOKEN", raising=False)
  commands, _ = dry_run(capsys, "up", *MULTI_HOST, "--spot", *RUN, "--delete-after", *MAIN_FLAGS)
  describe, create, scp, install, run, delete = commands
  assert describe == [*GCLOUD_TPU, "describe", "w2s-pod", *WHERE, "--format=value(acceleratorType)"]
  assert create == [*GCLOUD_TPU, "create", "w2s-pod", *WHERE, "--accelerator-type=v4-16",
                    "--version=tpu-ubuntu2204-base", "--spot"]
  assert scp == [*GCLOUD_TPU, "scp", *WHERE, str(tpu_vm.local_archive("w2s-pod")), "w2s-pod:w2s_jax.tar.gz",
                 "--worker=all"]
  assert install[:9] == [*GCLOUD_TPU, "ssh", "w2s-pod", *WHERE, "--worker=all"]
  install_script = remote_script(install)
  assert 'tar -xzf "$HOME/w2s_jax.tar.gz" -C "$HOME/w2s_jax"' in install_script
  assert 'python3.11 -m venv .venv; .venv/bin/python -m pip install -q --upgrade pip; ' \
         '.venv/bin/python -m pip install -q -e ".[tpu]"' in install_script
  assert run[:9] == [*GCLOUD_TPU, "ssh", "w2s-pod", *WHERE, "--worker=all"]
  main = shlex.join([".venv/bin/python", "launch/main.py", "--config=configs/demo.py",
                     "--workdir=gs://my-bucket/w2s/demo", "--distributed", "--config.seeds=(0, 1)",
                     "--config.wandb.mode=auto"])
  script = remote_script(run)
  assert f'then {main} 2>&1 | tee "$log"; else {main} > "$log" 2>&1; fi' in script  # worker 0 streams
  assert "set -euo pipefail" in script and "WANDB_API_KEY" not in script  # not set here: not passed
  assert delete == [*GCLOUD_TPU, "delete", "w2s-pod", *WHERE, "--quiet"]


def test_other_subcommands_and_single_host_runs(capsys):
  (status,), _ = dry_run(capsys, "status", *POD)
  assert status == [*GCLOUD_TPU, "describe", "w2s-pod", *WHERE]
  (logs,), _ = dry_run(capsys, "logs", *POD, "--worker=1")
  assert logs[:9] == [*GCLOUD_TPU, "ssh", "w2s-pod", *WHERE, "--worker=1"] and "worker1.log" in logs[9]
  (clone,), _ = dry_run(capsys, "install", *POD, "--git-url=https://github.com/me/w2s_jax.git", "--git-ref=v1",
                        "--extras=tpu,demo")
  script = remote_script(clone)  # no scp: the workers clone
  assert 'pip install -q -e ".[tpu,demo]"' in script
  assert 'git clone --quiet https://github.com/me/w2s_jax.git "$HOME/w2s_jax"' in script
  assert 'git -C "$HOME/w2s_jax" fetch --quiet origin v1' in script
  # One host: no jax.distributed, and a local workdir is the host's own.
  (run,), _ = dry_run(capsys, "run", *POD, "--accelerator-type=v5litepod-8", "--config=configs/demo.py",
                      "--workdir=workdirs/demo")
  assert "launch/main.py --config=configs/demo.py --workdir=workdirs/demo 2>&1" in remote_script(run)
  (_, create), _ = dry_run(capsys, "create", *POD, "--accelerator-type=v6e-8", "--reserved")
  assert create[4] == "create" and create[-2:] == ["--version=v2-alpha-tpuv6e", "--reserved"]


def test_local_workdir_refused_on_a_multi_host_slice(capsys, fake_gcloud):
  for subcommand in ("run", "up"):  # refused before anything runs, even the VM's creation
    assert tpu_vm.main([subcommand, *MULTI_HOST, "--config=configs/demo.py", "--workdir=/tmp/w2s"]) == 1
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and "local, but a v4-16 slice has 2 hosts" in err and "gs://" in err, err
  assert fake_gcloud() == []
  commands, _ = dry_run(capsys, "run", *MULTI_HOST, "--config=configs/demo.py", "--workdir=/mnt/nfs/w2s",
                        "--allow-local-workdir")
  assert "--workdir=/mnt/nfs/w2s --distributed" in remote_script(commands[0])
  assert tpu_vm.main(["run", *MULTI_HOST, "--config=configs/demo.py", "--workdir=gs:/bucket/x"]) == 1
  assert "not a gs://bucket/path URL" in capsys.readouterr().err


def test_bad_command_lines_are_one_line(capsys, fake_gcloud):
  for argv, says in ((["run", *MULTI_HOST, *RUN, "--", "--workdir=/elsewhere"], "--workdir is set by tpu_vm.py"),
                     (["delete", *POD, "--", "--config.seeds=(0,)"], "only `run` and `up` take them"),
                     (["create", "--name=x", "--accelerator-type=v4-8"], "required: --zone"),
                     (["create", *POD, "--accelerator-type=v4-8", "--spot", "--reserved"], "not allowed with"),
                     (["install", *POD, "--python=python"], "python3.N"),
                     (["install", *POD, "--extras=tpu;rm -rf ~"], "separated by commas"),
                     (["up", *MULTI_HOST, *RUN, "--python=py3"], "python3.N"),  # before the VM is created
                     (["status", "--name=My_TPU", "--zone=us-central2-b"], "a TPU VM name is lowercase"),
                     (["launch"], "invalid choice")):
    assert tpu_vm.main(argv) == 1
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and says in err, (argv, err)
  assert fake_gcloud() == []


def test_secret_reaches_the_workers_but_is_never_printed(capfd, fake_gcloud, monkeypatch):
  monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
  commands, printed = dry_run(capfd, "run", *MULTI_HOST, *RUN)
  assert "export WANDB_API_KEY=***;" in remote_script(commands[0]) and WANDB_KEY not in printed
  assert tpu_vm.main(["run", *MULTI_HOST, *RUN]) == 0
  out, err = capfd.readouterr()
  assert WANDB_KEY not in out + err and "WANDB_API_KEY=***" in err  # the echoed command
  (ran,) = fake_gcloud()
  assert f"export WANDB_API_KEY={WANDB_KEY};" in remote_script(ran)
  monkeypatch.setenv("FAKE_GCLOUD_FAIL", "ssh")
  assert tpu_vm.main(["run", *MULTI_HOST, *RUN]) == 1
  out, err = capfd.readouterr()
  assert WANDB_KEY not in out + err and "command failed with exit code 3" in err


def test_real_run_executes_the_dry_run_commands(capfd, fake_gcloud, monkeypatch):
  argv = ["up", *MULTI_HOST, "--preemptible", *RUN, "--delete-after", *MAIN_FLAGS]
  planned, _ = dry_run(capfd, *argv)
  monkeypatch.setenv("FAKE_GCLOUD_FAIL", "describe")  # no VM of that name yet: create it
  assert tpu_vm.main(argv) == 0
  assert fake_gcloud() == planned
  with tarfile.open(tpu_vm.local_archive("w2s-pod")) as tar:  # the checkout as git would ship it
    names = set(tar.getnames())
  assert {"launch/tpu_vm.py", "setup.cfg", "w2s_jax/errors.py"} <= names
  assert not any(n.startswith((".venv/", ".git/")) or "__pycache__" in n for n in names)


def test_failing_command_is_one_line_and_delete_after_still_deletes(capfd, fake_gcloud, monkeypatch):
  monkeypatch.setenv("FAKE_GCLOUD_FAIL", "ssh")
  assert tpu_vm.main(["run", *MULTI_HOST, *RUN, "--delete-after"]) == 1
  out, err = capfd.readouterr()
  (error,) = [line for line in err.splitlines() if line.startswith("error:")]
  assert error.startswith("error: command failed with exit code 3: gcloud compute tpus tpu-vm ssh w2s-pod")
  assert err.splitlines()[-1] == error and "logs --name=w2s-pod" in error
  assert [call[4] for call in fake_gcloud()] == ["ssh", "delete"]


def test_create_reuses_a_vm_of_the_same_type(capfd, fake_gcloud, monkeypatch):
  monkeypatch.setenv("FAKE_DESCRIBE", "v4-16")
  assert tpu_vm.main(["create", *MULTI_HOST]) == 0
  assert [call[4] for call in fake_gcloud()] == ["describe"] and "reusing" in capfd.readouterr().err
  monkeypatch.setenv("FAKE_DESCRIBE", "v4-32")
  assert tpu_vm.main(["create", *MULTI_HOST]) == 1
  err = capfd.readouterr().err
  assert len(err.splitlines()) == 1 and "exists in us-central2-b as v4-32, not v4-16" in err


def fake_worker(tmp_path, worker: str, exit_code: int) -> dict[str, str]:
  """A home with the project's fake venv python (prints its argv) and a curl that answers `worker`."""
  home, bin_dir = tmp_path / f"home{worker}", tmp_path / f"bin{worker}"
  (home / "w2s_jax" / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
  bin_dir.mkdir(exist_ok=True)
  python = home / "w2s_jax" / ".venv" / "bin" / "python"
  python.write_text(f'#!/bin/sh\necho "main.py says: $*"\necho "to stderr" >&2\nexit {exit_code}\n')
  (bin_dir / "curl").write_text(f"#!/bin/sh\necho {worker}\n")
  for f in (python, bin_dir / "curl"):
    f.chmod(0o755)
  return {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_the_run_script_streams_worker_0_and_logs_every_worker(tmp_path, capsys):
  (run,), _ = dry_run(capsys, "run", *MULTI_HOST, *RUN, "--", "--config.seeds=(0, 1)")
  (command,) = [a.removeprefix("--command=") for a in run if a.startswith("--command=")]
  for worker, exit_code in (("0", 0), ("1", 0), ("0", 5)):
    env = fake_worker(tmp_path, worker, exit_code)
    # What sshd does with --command: the login shell runs the string.
    done = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == exit_code, done.stderr  # pipefail: tee does not hide main.py's failure
    logs = sorted((Path(env["HOME"]) / "w2s_jax_logs").glob(f"*-worker{worker}.log"), key=os.path.getmtime)
    said = ("main.py says: launch/main.py --config=configs/demo.py --workdir=gs://my-bucket/w2s/demo "
            "--distributed --config.seeds=(0, 1)")
    assert len(logs) >= 1 and said in logs[-1].read_text() and "to stderr" in logs[-1].read_text()
    streamed = done.stdout + done.stderr
    assert (said in streamed) == (worker == "0"), streamed


def test_the_command_line_runs_as_a_script():
  done = subprocess.run([sys.executable, str(REPO / "launch" / "tpu_vm.py"), "delete", *POD, "--dry-run"],
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  assert done.stdout == shlex.join([*GCLOUD_TPU, "delete", "w2s-pod", *WHERE, "--quiet"]) + "\n"
