"""The settings boundary: typed records built once from the composed config, Hydra's schemas checking every config
file when it composes, and one line for every value a user can get wrong, through the command line's cli() in this
process (train_inprocess; tests/test_cli_errors.py runs the one-line contract in a process of its own)."""

import json

import pytest
import torch

from conftest import REPO, compose_cfg, train_inprocess


def one_line(done) -> str:
    assert done.returncode != 0
    output = done.stderr + done.stdout
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output, output[-2000:]
    (line,) = done.stderr.strip().splitlines()
    return line


# A user's own config files, written where Hydra looks for them (hydra.searchpath), each with one misspelled key.
OWN_FILES = {
    "init/mine.yaml": ("defaults:\n  - gaussian\n  - _self_\nsigma_w: 2\n", "init=mine",
                       "error: init.sigma_w (in init/mine.yaml) is not a setting of init gaussian; it takes: name, "
                       "sigma_w2, sigma_b2"),
    "experiment/typo.yaml": ("# @package _global_\nwidht: 128\n", "experiment=typo",
                             "error: widht (in experiment/typo.yaml) is not a setting of the config; it takes: depth, "
                             "width, "),
    "experiment/stats_typo.yaml": ("# @package _global_\nstats:\n  every_n_step: 10\n", "experiment=stats_typo",
                                   "error: stats.every_n_step (in experiment/stats_typo.yaml) is not a setting of "
                                   "stats; it takes: enabled, every_n_steps, "),
}  # fmt: skip


@pytest.mark.parametrize("name", list(OWN_FILES))
def test_a_misspelled_key_in_a_config_file_fails_when_the_config_is_composed(tmp_path, mnist_root, name):
    text, choice, message = OWN_FILES[name]
    conf = tmp_path / "conf"
    (conf / name).parent.mkdir(parents=True)
    (conf / name).write_text(text)
    runs = tmp_path / "runs"
    done = train_inprocess(choice, f"hydra.searchpath=[file://{conf}]", runs_dir=runs, data_root=mnist_root)
    assert one_line(done).startswith(message)
    assert not [p for p in runs.iterdir() if p.is_dir()]  # refused before any run folder was made


def test_a_misspelled_key_in_an_override_is_one_line(tmp_path, mnist_root):
    done = train_inprocess("init=gaussian", "init.sigma_w=2", runs_dir=tmp_path, data_root=mnist_root)
    assert one_line(done) == "error: init.sigma_w is not a setting of init gaussian; it takes: name, sigma_w2, sigma_b2"
    done = train_inprocess("trainer.max_step=3", runs_dir=tmp_path, data_root=mnist_root)  # an open group: Trainer's
    assert one_line(done).startswith(
        "error: trainer.max_step is not a lightning.Trainer argument (did you mean trainer.max_steps?)"
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("init.gain=abc", "error: init.gain must be null or a number (got 'abc')"),
        ("stats.profile_points=-1", "error: stats.profile_points must be an integer >= 1 (got -1)"),
        ("optim=sgd optim.momentum=-1", "error: torch.optim.SGD rejects the optim.* settings: Invalid momentum value"),
        ("data.root=/proc/x", "data error: data.root=/proc/x cannot be made (No such file or directory); choose a"),
        ("data.batch_size=100000000", "error: data.batch_size=100000000 is larger than the training set (55000 images"),
        ("init=lsuv init.max_iter=0", "error: init.max_iter must be an integer >= 1 (got 0)"),
        ("depth=3.5", "error: depth must be an integer >= 2 (got 3.5)"),
    ],
)
def test_values_a_new_user_gets_wrong_are_one_line_each(tmp_path, mnist_root, override, message):
    done = train_inprocess(*override.split(), "trainer.max_steps=1", runs_dir=tmp_path, data_root=mnist_root)
    assert one_line(done).startswith(message)


def test_a_sweep_with_a_misspelled_key_runs_no_job(tmp_path, mnist_root):
    done = train_inprocess("-m", "init=kaiming,gaussian", "init.sigma_w2=2", runs_dir=tmp_path, data_root=mnist_root)
    assert one_line(done).startswith("error: init.sigma_w2 is not a setting of init kaiming")
    assert not list(tmp_path.rglob("summary.json"))  # Hydra composes every job before launching the first


def test_settings_are_the_composed_config_typed():
    settings = compose_cfg("init=gaussian", "init.sigma_w2=2", "depth=7", "optim=sgd")
    assert settings.model.depth == 7 and settings.init.sigma_w2 == 2.0 and isinstance(settings.init.sigma_w2, float)
    assert settings.optim.name == "sgd" and settings.optim.lr == 1e-3
    assert settings.optim.factory().func is torch.optim.SGD
    assert settings.config["init"] == {"name": "gaussian", "sigma_w2": 2.0, "sigma_b2": 0.0}
    assert settings.essentials()["init"] == "gaussian" and settings.essentials()["optimizer"] == "sgd"
    # built again from its own config (an earlier summary's settings), the same
    assert type(settings).from_dict(json.loads(json.dumps(settings.config))) == settings


def test_what_does_not_change_results_and_what_members_may_differ_in():
    base = compose_cfg("depth=6")
    elsewhere = compose_cfg("depth=6", "runs_dir=/tmp/elsewhere", "threads=1", "force=true")
    assert base.same_results(elsewhere.config) and base.result_settings() == elsewhere.result_settings()
    assert not base.same_results(compose_cfg("depth=7").config)
    # checkpoint.* never changes results; a run from before the group (its settings without it) compares equal
    assert base.same_results(compose_cfg("depth=6", "checkpoint=off", "checkpoint.every_n_steps=10").config)
    before = {k: v for k, v in base.config.items() if k != "checkpoint"}
    assert base.same_results(before)
    members = [compose_cfg("depth=6", f"init={i}", f"seed={s}", "stats=off") for i, s in (("xavier", 1), ("lsuv", 2))]
    assert {m.group_key() for m in [base, *members]} == {base.group_key()}
    assert compose_cfg("depth=6", "optim=sgd").group_key() != base.group_key()


def test_folder_names_leave_out_what_the_settings_say():
    """train.yaml's override_dirname excludes are Settings.UNNAMED, through a resolver: no second list to keep."""
    from hydra import compose, initialize_config_dir

    from deepinit.settings.hydra import register
    from deepinit.settings.records import Settings

    register()
    assert set(Settings.NEUTRAL) == {"runs_dir", "sweep_name", "force", "resume", "threads", "data.root",
                                     "checkpoint.every_minutes", "checkpoint.every_n_steps"}  # fmt: skip
    assert set(Settings.NEUTRAL) <= set(Settings.UNNAMED) and "seed" in Settings.UNNAMED
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    assert list(cfg.hydra.job.config.override_dirname.exclude_keys) == list(Settings.UNNAMED)


def test_every_config_file_names_its_schema():
    """Each group file carries its record's schema (a file without it would go unchecked until the run starts)."""
    from deepinit.network.init_schemes import SCHEMES

    for name in SCHEMES:
        assert f"- /schema/init/{name}@_here_" in (REPO / "conf" / "init" / f"{name}.yaml").read_text(), name
    for path in ("data/mnist.yaml", "stats/default.yaml", "checkpoint/default.yaml", "train.yaml"):
        assert "- /schema/" in (REPO / "conf" / path).read_text(), path
