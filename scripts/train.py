"""Train one deep MLP (or a sweep with -m) on MNIST with a chosen init scheme.

python scripts/train.py init=kaiming depth=50
python scripts/train.py -m init=normal,xavier,kaiming depth=10,50
python scripts/train.py resume=<run folder>          # go on after Ctrl-C, SIGTERM, kill -9
"""

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from deepinit.base.rules import ConfigError
from deepinit.run import stopping
from deepinit.run.lifecycle import USER_ERRORS, RunInterrupted, check_resume, exit_line
from deepinit.settings.hydra import check_runs_dir, compose_error, from_config, register
from deepinit.settings.records import Settings, folder_name
from deepinit.sweep.job import open_job

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
register()  # the settings' schemas, before Hydra composes anything


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    num = hydra_cfg.job.num if hydra_cfg.mode == RunMode.MULTIRUN else None
    # under torchrun, every rank walks the same jobs; rank 0 clears and reports
    try:
        with open_job(cfg, Path(hydra_cfg.runtime.output_dir), num, rank_zero_only.rank) as job:
            if job.pending:
                job.run()
            job.end()
    except USER_ERRORS as e:  # a lone run's (a sweep job's failure is its summary, a row of the report)
        sys.exit(exit_line(e))  # exit status 1, the message alone on stderr (not Hydra's "Error executing job")


def name_the_sweep(argv: list[str]) -> None:
    """In a multirun, add sweep_name=<named by the overrides> unless the command names its sweep folder."""
    overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
    task = [o for o in overrides if not o.startswith("hydra")]
    named = any(o.startswith(("sweep_name=", "hydra.sweep.dir=")) for o in overrides)
    if {"-m", "--multirun"} & set(argv) and not named:
        # beside the other overrides: argparse takes them as one run of positional arguments
        at = max((i + 1 for i, a in enumerate(argv) if a in overrides), default=len(argv))
        argv.insert(at, f"sweep_name='{folder_name(sweep=task)}'")


def resume_command(argv: list[str]) -> list[str]:
    """`resume=<run folder>` as the command that made that run (its own overrides, from .hydra/overrides.yaml),
    run in that folder; other arguments as they are. ConfigError when the folder is no run's, or the run cannot be
    resumed so (checked before Hydra writes anything into the folder; --cfg, --info and --help only show)."""
    args, flags, overrides = split_command(argv)
    given = [a for a in overrides if a.startswith("resume=")]
    if not given:
        return argv
    if args.multirun:
        raise ConfigError("resume= takes one run's folder; to resume a sweep, run the sweep's command again")
    folder = Path(given[-1].partition("=")[2]).resolve()
    saved = folder / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise ConfigError(f"resume={folder}: not a run folder (no .hydra/overrides.yaml in it)")
    own = [o for o in OmegaConf.load(saved) if not o.startswith(("resume=", "hydra.run.dir=", "sweep_name="))]
    rest = [a for a in overrides if not a.startswith("resume=")]
    if args.cfg is None and args.info is None and not args.help:
        check_resume(folder, composed([*own, *rest]))
    # quoted: a run's folder name may hold '=' (residual-alpha=1-sqrt_L, mup-base_width=256), which Hydra's override
    # grammar takes for syntax in a bare value
    where = f'"{folder}"' if "'" in str(folder) else f"'{folder}'"
    return [argv[0], *flags, *own, *rest, f"hydra.run.dir={where}", f"resume={where}"]


def composed(overrides: list[str]) -> Settings:
    """The Settings these command-line overrides compose to, composed here without running anything (Hydra's
    compose API), for checks that must come before Hydra writes into a run folder; Hydra's own keys left out."""
    task = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return from_config(compose(config_name="train", overrides=task))


def command_line(argv: list[str]) -> list[str]:
    """argv as Hydra takes it: its flags before the overrides (argparse takes the overrides as one run of positional
    arguments, so `depth=3 -m init=a,b` would be refused), one command at a time (--cfg and --info show one run's
    config: a -m beside them is dropped, a sweep on the command line refused), and --help as this study's own
    (conf/hydra/help/deepinit.yaml). ConfigError, one line, for what Hydra's parser or Hydra would refuse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    args, flags, overrides = split_command(argv)
    shown = "--cfg" if args.cfg is not None else "--info" if args.info is not None else None
    if args.multirun and shown:
        flags = [f for f in flags if f not in ("-m", "--multirun")]
        args.multirun = False
        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
        except OverrideParseException:
            parsed = []  # Hydra says what it cannot read, in compose_error's one line
        swept = [o.input_line for o in parsed if o.is_sweep_override()]
        if swept:
            raise ConfigError(f"{shown} shows one run's config, and {swept[0]} sweeps several values; give it one "
                              f"to see that run's, or leave {shown} out to run the sweep")  # fmt: skip
    commands = {"--run": args.run, "--multirun": args.multirun, "--cfg": args.cfg is not None,
                "--info": args.info is not None, "--shell-completion": args.shell_completion}  # fmt: skip
    if sum(commands.values()) > 1:
        raise ConfigError(f"{' and '.join(c for c, given in commands.items() if given)} are two commands; give one")
    if args.resolve and args.cfg is None and not args.help:
        raise ConfigError("--resolve resolves what --cfg or --help prints; give it with one of them")
    if args.help and not any(o.startswith("hydra/help=") for o in overrides):
        OmegaConf.register_new_resolver("deepinit_choices", group_choices, replace=True)
        overrides.append("hydra/help=deepinit")
    return [argv[0], *flags, *overrides]


def split_command(argv: list[str]) -> tuple[Any, list[str], list[str]]:
    """argv as Hydra's parser reads it: its arguments, the flags (with their values) and the overrides, in their
    order. ConfigError, one line, for what the parser refuses."""
    from deepinit.base.private_api import hydra_args_parser

    parser = hydra_args_parser()

    def refuse(message: str) -> NoReturn:  # argparse's own answer is its usage, several lines, and exit status 2
        raise ConfigError(f"{message}; python scripts/train.py --help says what it takes")

    parser.error = refuse  # type: ignore[method-assign]
    args = parser.parse_intermixed_args(argv[1:])
    overrides, flags = list(args.overrides), list(argv[1:])
    for override in overrides:
        flags.remove(override)
    return args, flags, overrides


def group_choices(group: str) -> str:
    """A config group's choices for --help, the chosen one in brackets, wrapped below the help template's column."""
    import textwrap

    from hydra.core.global_hydra import GlobalHydra

    chosen = HydraConfig.get().runtime.choices.get(group)
    options = sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    column = " " * 18  # where conf/hydra/help/deepinit.yaml's template starts them
    names = ", ".join(f"[{o}]" if o == chosen else o for o in options)
    return textwrap.fill(names, width=118, initial_indent=column, subsequent_indent=column).lstrip()


def trainer_arguments(argv: list[str]) -> list[str]:
    """Every lightning.Trainer argument as `trainer.<argument>=value`: one that the trainer's config file has no key
    for as Hydra's add-or-override `++trainer.<argument>=value` (a key the file has stays as typed, so the job folders
    of the usual sweeps keep their names; a sweep job's folder shows the ++ of the others). ConfigError, naming the
    Trainer's arguments,
    for a `trainer.<name>` that is none of them (with any + prefix too: Lightning would refuse it only at the run)."""
    import difflib
    import inspect

    import lightning

    takes = [name for name in inspect.signature(lightning.Trainer.__init__).parameters if name != "self"]
    chosen = next((a.partition("=")[2] for a in reversed(argv) if a.startswith("trainer=")), "default")
    file = CONF_DIR / "trainer" / f"{chosen}.yaml"
    has = set(OmegaConf.load(file)) if file.is_file() else set()
    out = list(argv)
    for i, arg in enumerate(argv[1:], start=1):
        prefix = arg[: len(arg) - len(arg.lstrip("+"))]
        key, given, _ = arg[len(prefix) :].partition("=")
        if arg.startswith("-") or not given or not key.startswith("trainer."):
            continue
        name = key.split(".")[1]
        if name.startswith("_"):  # _target_, Hydra's
            continue
        if name not in takes:
            close = difflib.get_close_matches(name, takes, n=1)
            guess = f" (did you mean trainer.{close[0]}?)" if close else ""
            raise ConfigError(
                f"trainer.{name} is not a lightning.Trainer argument{guess}; it takes: {', '.join(takes)}"
            )
        if not prefix and name not in has:
            out[i] = f"++{arg}"
    return out


def cli(argv: list[str]) -> None:
    """The command line (argv as sys.argv): ends in SystemExit with the one-line error or the exit status where it
    does not succeed, as a user sees it; callable in-process as well as from __main__."""
    # A config that does not compose (an unknown choice, a misspelled key, a wrong type) is one line here: Hydra
    # raises it instead of printing its several lines when HYDRA_FULL_ERROR is set. A user who set it gets Hydra's own.
    hydra_full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        argv = command_line(argv)
        name_the_sweep(argv)  # by the overrides as typed, before trainer_arguments adds its ++
        argv = resume_command(trainer_arguments(argv))
        check_runs_dir(argv[1:])
        sys.argv = argv
        main()
    except ConfigError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt as e:  # Ctrl-C, a stop signal: the run (a sweep's current job) has said where it stopped
        if not isinstance(e, RunInterrupted):  # outside any run: between a sweep's jobs, say
            print("deepinit: interrupted", file=sys.stderr, flush=True)
        sys.exit(stopping.exit_status(e))  # 128 + the signal (130 Ctrl-C, 143 SIGTERM), as a shell reports it
    except Exception as e:
        line = None if hydra_full_error == "1" else compose_error(e)
        if line is None:
            raise
        sys.exit(f"error: {line}")
    finally:
        if hydra_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = hydra_full_error


if __name__ == "__main__":
    cli(sys.argv)
