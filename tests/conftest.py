import csv
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# make test runs the suite in WORKERS processes (pytest-xdist). One torch thread each: torch's default, a thread per
# core in every worker, oversubscribes the cores and its spinning threads made two workers slower than one.
# OMP_NUM_THREADS reaches the processes a test starts.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("DEEPINIT_DATA", REPO / "data"))


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The real MNIST data root, provisioned the way a user's first run would (once per machine)."""
    from deepinit.data.provision import ensure_dataset

    return ensure_dataset(DATA_ROOT, "MNIST")


@pytest.fixture(scope="session")
def mnist_module(mnist_root):
    from deepinit.data.datamodule import MNISTDataModule

    dm = MNISTDataModule(root=str(mnist_root), download=False)
    dm.setup("fit")
    return dm


@pytest.fixture
def full_disk(tmp_path) -> Iterator[dict]:
    """train_cli's arguments for a run that meets a full disk: its runs_dir on a 2 MB tmpfs where this machine
    lets us mount one (ENOSPC, on another filesystem than the temp folder, as a full data disk is), else a 1 MB
    limit on any file it writes (ulimit -f: EFBIG). Either way its checkpoint (3 MB) does not fit."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]
    mounted = shutil.which("mount") is not None and subprocess.run(mount, capture_output=True).returncode == 0
    try:
        yield {"runs_dir": disk} if mounted else {"runs_dir": disk, "max_file_bytes": 1 << 20}
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


def train_cli(
    *overrides: str,
    runs_dir: Path,
    data_root: Path | None = None,
    timeout: int = 600,
    max_file_bytes: int | None = None,
):
    """Run scripts/train.py exactly as a user would; returns the CompletedProcess.
    max_file_bytes: the largest file the run may write (ulimit -f), to meet a full disk for real."""
    env = {**os.environ, "DEEPINIT_DATA": str(data_root or DATA_ROOT), "PYTHONUNBUFFERED": "1"}
    flags = [o for o in overrides if o.startswith("-")]  # Hydra's -m must come before the overrides
    rest = [o for o in overrides if not o.startswith("-")]
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), *flags, f"runs_dir={runs_dir}", *rest]
    # Python ignores SIGXFSZ, so a write past the limit is an OSError (EFBIG), as ENOSPC is on a full disk.
    limit = None if max_file_bytes is None else lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes,) * 2)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout, preexec_fn=limit)


@functools.cache
def _train_script():
    """scripts/train.py as a module, imported once (its cli() is the whole command line)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("deepinit_train_script", REPO / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Hydra names the job (its log file train.log, hydra.job.name) after the script when the task function is
    # __main__'s, as in `python scripts/train.py`, and after the module otherwise
    task = module.main
    while hasattr(task, "__wrapped__"):
        task = task.__wrapped__
    task.__module__ = "__main__"
    return module


def train_inprocess(*overrides: str, runs_dir: Path, data_root: Path | None = None) -> subprocess.CompletedProcess:
    """train_cli's command in this process (scripts/train.py's cli(), no cold import of torch, Lightning and Hydra):
    a CompletedProcess with the exit status and the stdout and stderr a user sees, a sys.exit("error: ...") message
    on stderr as Python prints it (status 1). What the command changes in this process is put back: the environment,
    sys.argv, the working folder, Hydra's global state, the logging set-up it configures, signal handlers and
    warning filters (a run puts back its own: tests/test_train.py checks). For commands whose process is not what a
    test is about: the answers to input (error lines, --cfg, --help), runs and sweeps (Hydra's basic and the batched
    launcher run a sweep's jobs in one process in any case). train_cli for the rest: a signal, kill -9, DDP, joblib
    or submitit, a limit on file size, the no-traceback contract of a real interpreter (a few tests keep it)."""
    import contextlib
    import io
    import logging
    import warnings

    from hydra.core.global_hydra import GlobalHydra

    script = _train_script()
    flags = [o for o in overrides if o.startswith("-")]  # Hydra's -m must come before the overrides
    rest = [o for o in overrides if not o.startswith("-")]
    argv = [str(REPO / "scripts" / "train.py"), *flags, f"runs_dir={runs_dir}", *rest]
    saved_env = os.environ.get("DEEPINIT_DATA")
    saved_argv, saved_cwd = list(sys.argv), os.getcwd()
    signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}

    def loggers() -> list[logging.Logger]:
        named = logging.root.manager.loggerDict.values()
        return [logging.getLogger(), *(lg for lg in named if isinstance(lg, logging.Logger))]

    saved_logging = {lg: (lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers()}
    out, err = io.StringIO(), io.StringIO()
    code = 0
    os.environ["DEEPINIT_DATA"] = str(data_root or DATA_ROOT)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                script.cli(argv)
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)  # as Python prints sys.exit("...")'s message, status 1
                    code = 1
                else:
                    code = e.code or 0
    finally:
        if saved_env is None:
            os.environ.pop("DEEPINIT_DATA", None)
        else:
            os.environ["DEEPINIT_DATA"] = saved_env
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        for signum, handler in signals.items():
            signal.signal(signum, handler)
        GlobalHydra.instance().clear()
        for lg in loggers():
            level, handlers, propagate, disabled = saved_logging.get(lg, (logging.NOTSET, [], True, False))
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()  # Hydra's train.log handler, its console handler on our buffer
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def init_of(name: str, **options):
    """Scheme `name`'s settings record with `options` over a test's defaults (gain from the activation, zero biases;
    LSUV's own as in its yaml): what initialize() takes."""
    from deepinit.network.init_schemes import SCHEMES, FixedStdInit, GaussianInit, LsuvInit, init_settings

    record = SCHEMES[name].settings
    defaults = {"sigma_w2": 1.0, "sigma_b2": 0.0} if record is GaussianInit else {"gain": None, "bias_std": 0.0}
    if record is FixedStdInit:
        defaults["std"] = {"normal": 1.0, "small": 0.01}[name]
    if record is LsuvInit:
        defaults |= {"tol": 0.1, "max_iter": 10, "batch_size": 512}
    return init_settings({"name": name, **defaults, **options})


def compose_cfg(*overrides: str, data_root: Path = DATA_ROOT):
    """The run's Settings for `overrides`, as scripts/train.py makes them from the composed config."""
    from hydra import compose, initialize_config_dir

    from deepinit.settings.hydra import from_config, register

    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return from_config(compose("train", overrides=[f"data.root={data_root}", *overrides]))


def improved(curve, by: float) -> bool:
    """The loss fell by more than `by` from the first tenth of the curve to the last: a single batch's loss is too
    noisy to say whether a run learned (three logged losses of a good run: 0.253, 0.342, 0.275)."""
    tenth = max(1, len(curve) // 10)
    return float(sum(curve[:tenth]) / tenth - sum(curve[-tenth:]) / tenth) > by


def read_events(run_dir: Path):
    """A loaded EventAccumulator over run_dir's event files, nothing sampled away."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def read_csv(run_dir: Path) -> dict:
    """layer_stats.csv as {(step, group, quantity): {layer: value}}."""
    import csv
    from collections import defaultdict

    table: dict = defaultdict(dict)
    with open(run_dir / "layer_stats.csv") as f:
        for row in csv.DictReader(f):
            table[(int(row["step"]), row["group"], row["quantity"])][int(row["layer"])] = float(row["value"])
    return table


@pytest.fixture
def graphs_on_cpu(monkeypatch):
    """The fast steps' CUDA-graph path on CPU, to test its bookkeeping (static inputs, persistent gradients,
    step counting, the batched halves' order) where no GPU is: the steps want a graph as on CUDA, warm-up
    runs on the current stream, and a "captured" function is re-run on every replay, its gradients written
    afresh as a captured backward writes them. Only torch's capture itself is left to the CUDA tests."""
    import deepinit.batched.group as batched
    import deepinit.training.fast_step as fast_step

    params: list = []

    class Rerun:
        def __init__(self, fn) -> None:
            self.fn, self.out = fn, torch.empty(0)
            self.fresh = [p for p in params if p.grad is None]  # what the captured backward allocated

        def replay(self) -> None:
            for p in self.fresh:
                p.grad = None
            out = self.fn()
            if isinstance(out, torch.Tensor):
                self.out.resize_(out.shape).copy_(out)  # the graph's output tensor, rewritten in place

    def rerun_capture(fn, what):
        graph = Rerun(fn)
        return graph, graph.out

    class WantingAGraph(fast_step.Graphed):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.wanted = True
            if self.grads_of is not None:
                params[:] = [p for group in self.grads_of.param_groups for p in group["params"]]

    monkeypatch.setattr(fast_step, "capture", rerun_capture)
    monkeypatch.setattr(fast_step, "on_side_stream", lambda fn, device: fn())
    for mod in (fast_step, batched):
        monkeypatch.setattr(mod, "Graphed", WantingAGraph)


def recorded_step(stats_csv: Path) -> int:
    """The last step a layer_stats.csv holds so far (-1: none yet); a row still being written is not counted."""
    steps = []
    with open(stats_csv) as f:
        for row in csv.DictReader(f):
            try:
                steps.append(int(row["step"]))
            except (TypeError, ValueError):
                pass
    return max(steps, default=-1)


def wait_for_step(runs_dir: Path, watch: str, step: int, timeout: float = 300) -> Path:
    """The run folder of the first layer statistics file matching `watch` once it has reached `step`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.05)
        found = sorted(Path(runs_dir).glob(watch))
        if found and recorded_step(found[0]) >= step:
            return found[0].parent
    raise TimeoutError(f"no {watch} reached step {step} in {timeout} s")


def signal_at(
    runs_dir, mnist_root, step: int, args, signum: int, watch: str = "**/layer_stats.csv"
) -> tuple[subprocess.CompletedProcess, Path]:
    """Start scripts/train.py with args, and once the first layer statistics file matching `watch` reaches `step`,
    send the process `signum`; returns the ended process and the folder of that file."""
    env = {**os.environ, "DEEPINIT_DATA": str(mnist_root), "PYTHONUNBUFFERED": "1"}
    flags = [a for a in args if a.startswith("-")]  # Hydra's -m before the overrides
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), *flags, f"runs_dir={runs_dir}"]
    cmd += [a for a in args if not a.startswith("-")]
    default_handler = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731  (as in a terminal)
    # the output to files, not pipes: nobody reads a pipe while the run trains, and a full one would stop it
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, cwd=REPO,
                                preexec_fn=default_handler)  # fmt: skip
        try:
            run = wait_for_step(runs_dir, watch, step)
        finally:
            proc.send_signal(signum)
            proc.wait(timeout=300)
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read()), run
