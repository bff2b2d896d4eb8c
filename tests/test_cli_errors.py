"""The command line's answers to input it cannot take: one line on stderr that names the problem and what to write
instead, exit status 1, no traceback; and the inputs that were such answers until they were made to work (any
lightning.Trainer argument as trainer.<argument>=, the app's --help). Each command through scripts/train.py's cli() in
this process (train_inprocess), and a few as a user runs them, one process each, for the no-traceback contract."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import train_cli, train_inprocess

GROUPS = ("init", "optim", "param", "data", "trainer", "stats", "speed", "checkpoint", "arm", "architecture",
          "experiment", "hydra/launcher")  # fmt: skip


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    assert done.returncode == 1, done.stderr[-3000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(("error: ", "data error: ")), line
    return line


@pytest.mark.parametrize(
    "args, says",
    [
        (["seed=-1"], "error: seed must be an integer from 0 to 4294967295 (got -1)"),  # not seed_everything's
        (["block=residual", "alpha=1/sqrt(L)"], "alpha must be a number or one of: 1/sqrt_L, rezero"),
        (["trainer.val_chek_interval=100"], "is not a lightning.Trainer argument (did you mean trainer.val_check_int"),
        (["-m", "--cfg=job", "init=kaiming,xavier"], "--cfg shows one run's config, and init=kaiming,xavier sweeps"),
        (["--bogus"], "error: unrecognized arguments: --bogus"),  # argparse's answer is its usage and exit status 2
    ],
    ids=["seed", "alpha", "trainer-key", "cfg-with-m", "unknown-flag"],
)
def test_bad_input_is_one_line(tmp_path, args, says):
    line = one_error_line(train_inprocess(*args, "depth=3", runs_dir=tmp_path))
    assert says in line


@pytest.mark.parametrize(
    "args, says",
    [
        (["seed=-1"], "error: seed must be an integer from 0 to 4294967295 (got -1)"),  # refused in the Hydra job
        (["init=bogus"], "error: unknown init 'bogus'; choose one of: fixup, gaussian, kaiming, "),  # composing it
    ],
    ids=["in-the-job", "composing"],
)
@pytest.mark.slow  # a cold start of torch, Lightning and Hydra each
def test_bad_input_is_one_line_from_a_real_process(tmp_path, args, says):
    """The contract as a user meets it: a process of its own, exit status 1, one line on stderr, no traceback (what
    the in-process tests cannot see: anything written past Python's sys.stderr, warnings, the interpreter's exit)."""
    line = one_error_line(train_cli(*args, "depth=3", runs_dir=tmp_path, timeout=120))
    assert line.startswith(says)


@pytest.fixture
def unwritable(tmp_path) -> Iterator[Path]:
    """An empty folder no write reaches, root's neither: a read-only tmpfs where this machine lets us mount one,
    else mode 555 for anyone else; for root with no mount, sysfs's top, which takes no new folder."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)]
    mounted = shutil.which("mount") is not None and subprocess.run(mount, capture_output=True).returncode == 0
    if not mounted and os.geteuid() != 0:
        folder.chmod(0o555)
    try:
        yield folder if mounted or os.geteuid() != 0 else Path("/sys")
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_data_root_that_cannot_be_written_is_one_line_before_any_download(tmp_path, unwritable):
    done = train_inprocess("depth=3", runs_dir=tmp_path / "runs", data_root=unwritable)
    line = one_error_line(done)
    assert line.startswith(f"data error: data.root={unwritable} cannot be written (") and "data.root=<folder>" in line
    assert "Downloading" not in done.stdout and "Fetching" not in done.stdout


def test_any_trainer_argument_is_a_trainer_key_in_a_sweep_too(tmp_path, mnist_root):
    """val_check_interval is in no config file: trainer.val_check_interval= is Hydra's add-or-override for it, and the
    sweep's folder is named by the command as typed."""
    done = train_inprocess("-m", "trainer.val_check_interval=2", "depth=3", "width=16", "trainer.max_steps=3",
                           "stats=off", runs_dir=tmp_path, data_root=mnist_root)  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    (sweep,) = tmp_path.iterdir()
    assert sweep.name.startswith("sweep_trainer.val_check_interval=2_depth=3")
    (job,) = [p for p in sweep.iterdir() if (p / ".hydra").is_dir()]
    assert "++trainer.val_check_interval=2" in (job / ".hydra" / "overrides.yaml").read_text()
    assert "  val_check_interval: 2\n" in (job / ".hydra" / "config.yaml").read_text()
    assert '"status": "ok"' in (job / "summary.json").read_text()


def test_cfg_with_m_and_no_command_line_sweep_prints_the_config(tmp_path):
    done = train_inprocess("-m", "--cfg=job", "depth=3", runs_dir=tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr[-3000:]
    config = yaml.safe_load(done.stdout)
    assert config["depth"] == 3 and config["init"]["name"] == "kaiming"


def test_help_says_what_every_group_and_key_is(tmp_path):
    from deepinit.settings.records import TOP_LEVEL

    done = train_inprocess("--help", "init=xavier", runs_dir=tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) <= 60
    described = {line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("   ")}
    keys = [key for record in TOP_LEVEL for key in record.keys()]
    assert not set((*GROUPS, *keys)) - described, "a group or key --help does not describe"
    assert "[xavier]" in done.stdout and "kaiming_fan_out" in done.stdout  # the choices, the chosen one marked
    assert sum("python scripts/train.py" in line for line in lines) == 3
