"""What a run is, as frozen records built once from the composed config: the model, its init (the scheme's own
record, deepinit.network.init_schemes), the data, the layer statistics, the learning-speed measurement, the optimizer
and the Trainer, and the run-level settings. Every range check is here (each record's fields carry their rule);
everything below takes these records.

`Settings.from_dict(config)` builds them from the composed config as plain data (deepinit.settings.hydra turns
Hydra's DictConfig into that); the keys that do not change results, the batched group key and the essentials a
reader compares runs by are its methods.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from deepinit.base.rules import (
    Checked,
    ConfigError,
    Rule,
    config_key,
    flag,
    integer,
    names_from,
    number,
    one_of,
    setting,
    text,
)
from deepinit.data.provision import DATASETS
from deepinit.network.activations import ACTIVATIONS
from deepinit.network.init_schemes import SCHEMES, InitSettings, init_settings
from deepinit.network.model import ALPHAS, BLOCKS, NORMS, architecture
from deepinit.network.parametrization import PARAMS
from deepinit.observe.stats import GROUPS

MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's choices


@dataclass(frozen=True)
class ModelSettings(Checked):
    depth: int = setting(integer(2))  # Linear layers, input and output included
    width: int = setting(integer(1))
    activation: str = setting(one_of(ACTIVATIONS))
    bias: bool = setting(flag())
    norm: str = setting(one_of(NORMS))  # before each hidden activation: Linear -> norm -> activation
    block: str = setting(one_of(BLOCKS))
    alpha: Any = setting(  # a residual branch's multiplier (deepinit.network.model)
        Rule(f"a number or one of: {', '.join(ALPHAS)}", lambda v: v in ALPHAS or number().ok(v), ALPHAS)
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block == "plain" and self.alpha != 1:
            raise ConfigError(f"alpha={self.alpha} multiplies a residual branch, and block=plain has none; set "
                              "block=residual or leave alpha at 1")  # fmt: skip

    @property
    def architecture(self) -> str:
        return architecture(self.norm, self.block, self.alpha)


@dataclass(frozen=True)
class RunSettings(Checked):
    seed: int = setting(integer(0, maximum=2**32 - 1), per_member=True)  # seed_everything's (numpy's) range
    runs_dir: str = setting(text(), neutral=True)
    sweep_name: str = setting(text(), neutral=True)
    force: bool = setting(flag(), neutral=True)
    resume: str | None = setting(text(null=True), neutral=True)
    threads: int | None = setting(integer(1, null=True), neutral=True)
    matmul_precision: str = setting(one_of(MATMUL_PRECISIONS))
    fast: bool = setting(flag())


@dataclass(frozen=True)
class DataSettings(Checked):
    PREFIX = "data"
    target: str = setting(text(), key="_target_")
    root: str = setting(text(), neutral=True)
    dataset: str = setting(one_of(DATASETS))
    batch_size: int = setting(integer(1))
    eval_batch_size: int = setting(integer(1))
    val_size: int = setting(integer(0))
    split_seed: int = setting(integer())
    shuffle_seed: int = setting(integer(), per_member=True)
    shuffle: bool = setting(flag())
    mean: float = setting(number())
    std: float = setting(number(above=0))
    download: bool = setting(flag())

    def __post_init__(self) -> None:
        super().__post_init__()
        total = DATASETS[self.dataset].train
        if self.val_size >= total:
            raise ConfigError(
                f"data.val_size must be an integer from 0 to {total - 1}, below {self.dataset}'s {total} training"
                f" images (got {self.val_size})"
            )
        # a batch larger than the training set would be the whole set, and the activations of every layer for it
        # would fill the memory (depth 50: 23 GB before the kernel kills the run)
        if self.batch_size > (train := total - self.val_size):
            raise ConfigError(
                f"data.batch_size={self.batch_size} is larger than the training set ({train} images: {total} minus"
                f" data.val_size={self.val_size}); choose at most {train}"
            )

    def make(self) -> Any:
        """The DataModule these settings describe (its class: `_target_`)."""
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "target"}
        return Target("data", self.target, options).make()


@dataclass(frozen=True)
class StatsSettings(Checked):
    """The layer statistics (deepinit.observe.recorder.LayerRecorder); enabled false: none at all."""

    PREFIX = "stats"
    enabled: bool = setting(flag())
    every_n_steps: int = setting(integer(1))
    histogram_every_n_steps: int = setting(integer(0, note=", 0 for none"))
    groups: list[str] = setting(names_from(GROUPS, "groups"))
    figures: bool = setting(flag())  # depth profile and heat map at the end of fit
    profile_points: int = setting(integer(1))  # logged steps drawn in the depth profile
    csv_file: str | None = setting(text(null=True))
    isometry_max_depth: int = setting(integer(0, note=", 0 for off"))


@dataclass(frozen=True)
class SpeedSettings(Checked):
    """How fast the run learns (deepinit.observe.speed): accuracy on the first `samples` validation images every
    `every_n_steps` steps, and the first step at `target_acc`; enabled false: not measured."""

    PREFIX = "speed"
    enabled: bool = setting(flag())
    target_acc: float = setting(number(above=0))
    every_n_steps: int = setting(integer(1))
    samples: int = setting(integer(1))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_acc > 1:
            raise ConfigError(f"speed.target_acc must be a number > 0 and <= 1 (got {self.target_acc})")


def param_label(name: str, base_width: int, zero_readout: bool) -> str:
    """A parametrization in a few words (the HParams column, the start line, a folder's name): sp, mup base_width=256,
    either + zero_readout."""
    return " + ".join([name if name == "sp" else f"{name} base_width={base_width}", *(["zero_readout"] * zero_readout)])


def standard_param(name: str, zero_readout: bool) -> bool:
    """sp with the scheme's readout: what every run from before param= ran, one learning rate for every layer."""
    return name == "sp" and not zero_readout


@dataclass(frozen=True)
class ParamSettings(Checked):
    """How the layers' init and learning rates follow the width (deepinit.network.parametrization): sp, the init
    scheme's scales and one learning rate; mup, rescaled from base_width, where it equals sp. zero_readout: the last
    layer's weights start at zero."""

    PREFIX = "param"
    name: str = setting(one_of(PARAMS))
    base_width: int = setting(integer(1))
    zero_readout: bool = setting(flag())

    @property
    def label(self) -> str:
        return param_label(self.name, self.base_width, self.zero_readout)

    @property
    def standard(self) -> bool:
        return standard_param(self.name, self.zero_readout)


@dataclass(frozen=True)
class CheckpointSettings(Checked):
    """Periodic checkpoints (deepinit.run.checkpoints), besides the stopped run's and the last epoch's: a kill with no
    warning loses at most this much training; every_n_steps, where set, instead of every_minutes; both null: none.
    They do not change results (a resumed run ends as the uninterrupted one)."""

    PREFIX = "checkpoint"
    every_minutes: float | None = setting(number(above=0, null=True), neutral=True)
    every_n_steps: int | None = setting(integer(1, null=True), neutral=True)  # set: instead of every_minutes


@dataclass(frozen=True)
class Target:
    """A `_target_` group left open to its class's own arguments (optim.*, trainer.*): the class checks them, and
    its refusal is one line naming the group."""

    key: str
    target: str
    options: dict[str, Any]

    @classmethod
    def from_dict(cls, key: str, values: dict[str, Any]) -> Any:
        values = dict(values)
        target = values.pop("_target_", None)
        if not isinstance(target, str):
            raise ConfigError(f"{key}._target_ must name a class (got {target!r})")
        values.pop("_partial_", None)
        return cls(key, target, values)

    def make(self, partial: bool = False, **kwargs: Any) -> Any:
        try:
            return instantiate({"_target_": self.target, "_partial_": partial, **self.options}, **kwargs)
        except InstantiationException as e:
            cause = e.__cause__ or e
            raise ConfigError(f"{self.target} rejects the {self.key}.* settings: {cause}") from None


@dataclass(frozen=True)
class OptimSettings(Target):
    """optim.*: the optimizer's class (`_target_`) and its arguments, lr among them."""

    # optimizers whose update is the learning rate times a direction that does not depend on it (torch's Adam, AdamW,
    # SGD with momentum, RMSprop): the members of a batched group may train at their own rates (deepinit.batched)
    LINEAR_IN_LR = ("adam", "adamw", "sgd", "rmsprop")

    def __post_init__(self) -> None:
        lr = self.options.get("lr")
        if not (isinstance(lr, int | float) and not isinstance(lr, bool) and lr > 0):
            raise ConfigError(f"optim.lr must be a number > 0 (got {lr})")
        try:  # the optimizer's own checks (momentum, betas, ...), on a parameter of one element
            self.factory()([torch.nn.Parameter(torch.zeros(1))])
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{self.target} rejects the optim.* settings: {e}") from None

    def factory(self) -> functools.partial:
        """The optimizer's constructor with these settings: factory(params) -> torch.optim.Optimizer; its `func` is
        the optimizer's class."""
        return self.make(partial=True)

    @functools.cached_property
    def name(self) -> str:
        """The optimizer's short name (adam, sgd): its class's."""
        return self.factory().func.__name__.lower()

    @property
    def lr(self) -> float:
        return self.options["lr"]


@dataclass(frozen=True)
class TrainerSettings(Target):
    """trainer.*: any lightning.Trainer argument, Lightning's to check (TrainerSettings.make: its refusal in one
    line)."""

    @property
    def checkpointing(self) -> bool:
        return bool(self.options.get("enable_checkpointing", True))  # Lightning's default

    @property
    def max_epochs(self) -> int | None:
        return self.options.get("max_epochs")  # None is Lightning's default


# Top-level config keys left out of a job folder's name (hydra.job.override_dirname, through the resolver
# deepinit.settings.hydra registers): the job number keeps folders apart, these would only make names long
UNNAMED_EXTRA = ("experiment", "seed", "stats", "trainer.max_steps", "trainer.max_epochs",
                 "trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.limit_test_batches",
                 "trainer.accelerator")  # fmt: skip
TOP_LEVEL = (ModelSettings, RunSettings)
# summary.json's `config` and the HParams columns: column -> the config key it shows
ESSENTIALS = {"init": "init", "depth": "depth", "width": "width", "activation": "activation", "bias": "bias",
              "architecture": "block", "optimizer": "optim", "lr": "optim.lr", "batch_size": "data.batch_size",
              "max_epochs": "trainer.max_epochs", "data": "data", "param": "param", "seed": "seed"}  # fmt: skip


# A lone run's folder name leaves these values unsaid (the defaults of conf/), so the default run keeps its short
# name; any other value is said, and two runs that differ in an essential never share a name in TensorBoard's runs
# list (tests/test_names.py checks the default run's name, which catches a default changed in conf/ alone).
UNSAID = {"architecture": "plain", "optimizer": "adam", "lr": 3e-4, "batch_size": 128, "max_epochs": 2,
          "max_steps": -1, "data": "MNIST", "bias": True, "param": "sp"}  # fmt: skip


MAX_SWEEP_NAME = 100


def folder_name(config: Any = None, sweep: Sequence[str] | None = None) -> str:
    """The one namer of the folders runs go in. A lone run's (before its time stamp), from its composed config: init,
    activation, depth, width, whatever essential differs from UNSAID, and the seed:
    `kaiming_relu_d50_w256_batchnorm_sgd_lr0.001_s0`, read from the raw values (Hydra asks before the settings are
    checked; a bad value is refused later, in one line). A sweep's, from its command-line overrides (`sweep`):
    `sweep_init=kaiming,xavier_depth=10,50`, readable, stable (a rerun of the command finds its folder), one path
    component, the keys that do not change results (Settings.NEUTRAL) left out. Its jobs' folders are its job number
    and their overrides (conf/train.yaml's hydra.sweep.subdir, without Settings.UNNAMED)."""
    if sweep is not None:
        kept = [o for o in sweep if o.lstrip("+~").split("=")[0] not in Settings.NEUTRAL]
        name = re.sub(r"[^\w=,.+-]", "-", "_".join(kept)) or "defaults"
        if len(name) > MAX_SWEEP_NAME:  # keep it readable and unique: a prefix and a hash of the whole
            name = f"{name[: MAX_SWEEP_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
        return f"sweep_{name}"

    optim, data, trainer, param = config["optim"], config["data"], config["trainer"], config["param"]
    said = {
        "architecture": architecture(config["norm"], config["block"], config["alpha"]),
        "optimizer": str(optim["_target_"]).rpartition(".")[2].lower(),
        "lr": optim.get("lr"), "batch_size": data["batch_size"], "max_epochs": trainer.get("max_epochs"),
        "max_steps": trainer.get("max_steps"), "data": data["dataset"], "bias": config["bias"],
        "param": param_label(param["name"], param["base_width"], param["zero_readout"]),
    }  # fmt: skip
    shown = {"architecture": "{}", "optimizer": "{}", "lr": "lr{}", "batch_size": "b{}", "max_epochs": "e{}",
             "max_steps": "{}steps", "data": "{}", "bias": "nobias", "param": "{}"}  # fmt: skip
    parts = [str(config["init"]["name"]), str(config["activation"]), f"d{config['depth']}", f"w{config['width']}"]
    # null, or max_epochs=-1 (Lightning's "no limit"), say nothing of the run
    parts += [shown[k].format(v) for k, v in said.items() if v not in (None, -1) and v != UNSAID[k]]
    name = "_".join([*parts, f"s{config['seed']}"]).replace(" + ", "+")
    return re.sub(r"[^\w.=+-]+", "-", name)  # one path component: `residual alpha=1/sqrt_L+layernorm`




def _flagged(flag_name: str) -> tuple[str, ...]:
    return tuple(
        record.key(config_key(f))
        for record in (*TOP_LEVEL, DataSettings, StatsSettings, CheckpointSettings)
        for f in dataclasses.fields(record)
        if f.metadata.get(flag_name)
    )


def _check_architecture(settings: Settings) -> None:
    """The combinations the model cannot be built or initialized with, each one line."""
    model, init = settings.model, settings.init
    if SCHEMES[init.name].residual and model.block != "residual":
        raise ConfigError(f"init={init.name} initializes residual branches, and block={model.block} has none; set "
                          "block=residual")  # fmt: skip
    if init.name == "lsuv" and model.architecture != "plain":
        raise ConfigError(f"init=lsuv rescales a plain MLP layer by layer; with {model.architecture} choose another"
                          " init")  # fmt: skip
    if settings.param.name != "sp" and model.depth < 3:
        raise ConfigError(f"param={settings.param.name} scales the hidden layers with width, and depth={model.depth} "
                          "has none; choose depth >= 3 or param=sp")  # fmt: skip
    if model.block == "residual" and model.depth < 3:
        raise ConfigError(f"block=residual skips around the square layers 2..depth-1, and depth={model.depth} has "
                          "none; choose depth >= 3")  # fmt: skip
    data = settings.data
    last = (DATASETS[data.dataset].train - data.val_size) % data.batch_size
    if model.norm == "batchnorm" and (data.batch_size < 2 or last == 1):
        one = f"data.batch_size={data.batch_size}" + ("" if data.batch_size < 2 else " leaves an epoch's last batch")
        raise ConfigError(f"norm=batchnorm normalizes over the batch, and {one} with one image; choose another "
                          "data.batch_size (>= 2) or norm=layernorm")  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """One run's settings. config: the whole composed config, resolved (summary.json's `settings`, what a rerun
    compares); multirun and swept: how Hydra launched it (in a sweep; the keys the sweep varies, with this run's
    values: the HParams columns that open ticked)."""

    model: ModelSettings
    init: InitSettings
    data: DataSettings
    param: ParamSettings
    stats: StatsSettings
    speed: SpeedSettings
    checkpoint: CheckpointSettings
    optim: OptimSettings
    trainer: TrainerSettings
    run: RunSettings
    config: dict[str, Any]
    multirun: bool = False
    swept: dict[str, Any] = field(default_factory=dict)

    GROUPS = ("data", "init", "param", "stats", "speed", "checkpoint", "optim", "trainer")
    # The settings that do not change a run's results: a sweep's name leaves them out, a rerun compares its settings
    # without them, a batched group lets them differ.
    NEUTRAL = _flagged("neutral")
    # What members of one batched group may differ in besides NEUTRAL: the init, the seed (and the shuffle it seeds),
    # the layer statistics, the width parametrization and (group_key) the learning rate; everything else must be equal
    # (same shapes, same loop).
    PER_MEMBER = ("init", "stats", "param", *_flagged("per_member"))
    UNNAMED = tuple(dict.fromkeys((*NEUTRAL, *UNNAMED_EXTRA)))
    # What a resumed run may change besides NEUTRAL: how long it trains. Nothing else in the loop reads them (no
    # schedule), so going on further ends as a run given the longer budget from the start would.
    RESUMABLE = ("trainer.max_steps", "trainer.max_epochs")
    # Settings added after runs were made, at the value every earlier run had: a run with that value compares equal to
    # one from before the setting (a rerun sweep does not retrain its finished jobs).
    AS_BEFORE = {"data.shuffle": True}

    @classmethod
    def from_dict(cls, config: dict[str, Any], multirun: bool = False, swept: dict[str, Any] | None = None) -> Settings:
        """The records from the composed config as plain data; ConfigError (one line) for a key no record has, a key
        missing, or a value out of range."""
        top = {k: v for k, v in config.items() if k not in cls.GROUPS}
        known = [k for record in TOP_LEVEL for k in record.keys()]
        unknown = sorted(set(top) - set(known))
        if unknown:
            raise ConfigError(f"{unknown[0]} is not a setting; the config takes: {', '.join(known)} and the groups "
                              f"{', '.join(cls.GROUPS)}")  # fmt: skip
        for group in cls.GROUPS:
            if not isinstance(config.get(group), dict):
                raise ConfigError(f"the config has no {group} group (choose one: {group}=<name>)")
        model, run = (record.from_dict({k: top[k] for k in record.keys() if k in top}) for record in TOP_LEVEL)
        settings = cls(
            model=model,
            init=init_settings(config["init"]),
            data=DataSettings.from_dict(config["data"]),
            param=ParamSettings.from_dict(config["param"]),
            stats=StatsSettings.from_dict(config["stats"]),
            speed=SpeedSettings.from_dict(config["speed"]),
            checkpoint=CheckpointSettings.from_dict(config["checkpoint"]),
            optim=OptimSettings.from_dict("optim", config["optim"]),
            trainer=TrainerSettings.from_dict("trainer", config["trainer"]),
            run=run,
            config=config,
            multirun=multirun,
            swept=dict(swept or {}),
        )
        _check_architecture(settings)
        if settings.speed.enabled and settings.data.val_size == 0:
            raise ConfigError("speed is measured on validation images, and data.val_size=0 holds none; set "
                              "data.val_size > 0 or speed=off")  # fmt: skip
        return settings

    def essentials(self) -> dict[str, Any]:
        """The settings a reader compares runs by (summary.json's `config`, the HParams row, the start line)."""
        m, d = self.model, self.data
        return {"init": self.init.name, "depth": m.depth, "width": m.width, "activation": m.activation,
                "bias": m.bias, "architecture": m.architecture, "optimizer": self.optim.name, "lr": self.optim.lr,
                "batch_size": d.batch_size, "max_epochs": self.trainer.max_epochs, "data": d.dataset,
                "param": self.param.label, "seed": self.run.seed}  # fmt: skip

    def swept_columns(self) -> dict[str, Any]:
        """The keys this run's sweep varies as HParams columns, in the sweep's order: an essential's own column where
        it is one (`optim` is `optimizer`, with the essential's value), else the key with this run's value."""
        essentials, shows = self.essentials(), {key: column for column, key in ESSENTIALS.items()}
        columns = {}
        for key, value in self.swept.items():
            column = shows.get(key, key)
            columns[column] = essentials.get(column, value)
        return columns

    @classmethod
    def results_part(cls, config: dict[str, Any], also: tuple[str, ...] = ()) -> dict[str, Any]:
        """The settings that decide a run's results: a composed config, JSON-normalized, without NEUTRAL (and the
        dotted keys `also` names)."""
        config = json.loads(json.dumps(config))
        for key in (*cls.NEUTRAL, *also):
            *parents, leaf = key.split(".")
            node = config
            for parent in parents:
                node = node.get(parent, {})
            node.pop(leaf, None)
        param = config.get("param")
        if isinstance(param, dict) and standard_param(param.get("name"), param.get("zero_readout")):
            del config["param"]  # what every run from before param= ran: they compare equal
        for key, value in cls.AS_BEFORE.items():
            group, leaf = key.split(".")
            if config.get(group, {}).get(leaf, value) == value:
                config.get(group, {}).pop(leaf, None)
        # a group of neutral keys only (checkpoint) leaves nothing: runs from before it compare equal
        return {k: v for k, v in config.items() if v != {} or k not in cls.GROUPS}

    def result_settings(self) -> dict[str, Any]:
        return self.results_part(self.config)

    def same_results(self, earlier_config: dict[str, Any] | None) -> bool:
        """Whether a run with `earlier_config` (an earlier summary's settings) ran with the settings that decide
        results."""
        return not self.differing(earlier_config)

    def differing(self, earlier_config: dict[str, Any] | None, also: tuple[str, ...] = ()) -> dict[str, tuple]:
        """The settings that decide results and differ from an earlier run's (`earlier_config`, its summary's
        settings), leaving out the dotted keys `also` names: key -> (earlier value, this run's)."""
        before, now = (_flat(self.results_part(c, also=also)) for c in (earlier_config or {}, self.config))
        keys = sorted(before.keys() | now.keys())
        unset = "(unset)"  # a key one of the two has not: not the same as a null value
        return {k: (before.get(k, unset), now.get(k, unset)) for k in keys
                if k not in before or k not in now or before[k] != now[k]}  # fmt: skip

    def group_key(self) -> str:
        """Runs with equal keys can be trained as one stacked model (deepinit.batched)."""
        own_lr = ("optim.lr",) if self.optim.name in OptimSettings.LINEAR_IN_LR else ()
        return json.dumps(self.results_part(self.config, also=(*self.PER_MEMBER, *own_lr)), sort_keys=True)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (`trainer.max_steps`), the form a user overrides them in."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out
