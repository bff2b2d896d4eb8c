"""A run's TensorBoard logger: one event file per run, and its HParams row written once, at the end, with the final
metrics and the columns that open ticked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams as tensorboard_hparams

from deepinit.base.private_api import event_writer, open_experiment, sanitize_hparams
from deepinit.results.summary import Summary

# TensorBoard's HParams dashboard ticks at most 5 hyperparameter columns when it opens (a fixed 5 in its query
# pane): those whose experiment entry says `differs`, by name, then the rest by name. Left to itself it showed
# activation, batch_size, bias, data, depth. Marked instead: the keys the run's sweep varies, then the study's
# columns (the last one short enough for a cell; each of its three is also a column of its own), five in all.
TICKED = 5
TRAINING = "optimizer, lr, seed"
SHOWN = ("init", "depth", "activation", "width", TRAINING)


def training_label(config: dict[str, Any]) -> str:
    """The optimizer, learning rate and seed in one short cell of the HParams table: 'adam, 0.0003, 0'."""
    return f"{config['optimizer']}, {config['lr']:g}, {config['seed']}"


def shown_columns(swept: dict[str, Any]) -> list[str]:
    """The columns marked to be ticked on open: the swept ones first, then the study's, five in all."""
    return list(dict.fromkeys([*swept, *SHOWN]))[:TICKED]


def hparams_row(summary: Summary, swept: dict[str, Any]) -> dict[str, Any]:
    """The HParams row: the config essentials, the keys the sweep varies, the theory's chi_1, xi_c, depth / xi_c and
    the Jacobian's predicted spread."""
    row = {**(summary.config or {}), **{k: v for k, v in swept.items() if k not in (summary.config or {})}}
    if summary.learning_rates is not None and len(summary.learning_rates) > 1:  # a width parametrization's
        row |= {f"lr/{name}": lr for name, lr in summary.learning_rates.items()}
    if summary.theory is not None:
        t = summary.theory
        row |= {"theory/chi_1": t.chi_1, "theory/xi_c": t.xi_c, "theory/depth_over_xi_c": t.depth_over_xi_c,
                "theory/jacobian_spread": t.jacobian_spread}  # fmt: skip
    return row


def hparams_metrics(summary: Summary, history: dict[tuple[str, str], list]) -> dict[str, float]:
    """The run's final metrics as TensorBoard's HParams dashboard ranks them (NaN where not measured); history:
    the layer statistics' record (deepinit.observe.recorder.LayerRecorder.history), for the init's step-0 drift."""
    nan = float("nan")
    m = summary.metrics
    out = {
        f"final/{k}": nan if m is None or getattr(m, k) is None else float(getattr(m, k))
        for k in ("test_acc", "test_loss", "best_val_acc", "val_acc", "train_loss")
    }
    out["final/diverged"] = float(summary.status == "diverged")
    out["final/divergence_step"] = float(summary.divergence.step if summary.divergence is not None else -1)
    reached = summary.speed.steps_to_target if summary.speed is not None else None
    out["final/steps_to_target"] = nan if reached is None else float(reached)  # NaN: never, or not measured
    # Step-0 diagnostics of the init itself: how far the forward signal and the gradient drift across depth.
    act = dict(history.get(("activations", "sqr"), [])).get(0)
    grad = dict(history.get(("gradients", "sqr"), [])).get(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["final/step0_ln_act_sqr_last_over_first"] = float(np.log(act[-1] / act[0])) if act is not None else nan
        out["final/step0_ln_grad_sqr_first_over_last"] = float(np.log(grad[0] / grad[-1])) if grad is not None else nan
    return out


# TensorBoard's dashboards sort their groups (a tag up to its first '/') by name, capitals first; Time Series opens
# only the first two, and shows two cards a row beside its settings. So the first group, Overview, holds the four
# cards of a run's story (its accuracy, loss, learning speed and the recorder's depth profile against theory), the
# second, Signal, the rest of the network-level view (deepinit.observe.recorder), and every per-layer group is lowercase
# (docs/tensorboard.md). The module logs the names Lightning users know; the logger writes these tags for them.
# No parentheses in a tag: Custom Scalars draws no line for a tag with one.
TAGS = {
    "val/acc": "Overview/accuracy, validation",
    "train/loss": "Overview/loss, train",
    "speed/val_acc": "Overview/speed: accuracy on the first validation images",
}


def tag_of(name: str) -> str:
    """The TensorBoard tag a logged metric is written under."""
    return TAGS.get(name, name)


class RunLogger(TensorBoardLogger):
    """One event file per run. Lightning finalizes (closes) its logger after fit and again after test, and a
    closed writer reopens as a new event file on the next write; here those only flush, and `close` ends the
    writer once, when the run is over (failures included). Its HParams entry opens on the study's columns."""

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        # purge_step: SummaryWriter's; TensorBoard then drops the earlier event files' entries from that step on
        super().__init__(save_dir=str(run_dir), name="", version="", default_hp_metric=False, purge_step=purge_step)
        self.train_losses: list[tuple[int, float]] = []  # (step, train/loss) as logged: summary's train_loss_tail

    @rank_zero_only  # under DDP the other processes' experiment is a dummy with no file writer
    def log_hyperparams(
        self,
        params: dict[str, Any],
        metrics: dict[str, float] | None = None,
        step: int | None = None,
        shown: list[str] | tuple[str, ...] = SHOWN,
    ) -> None:
        """Lightning's log_hyperparams, with the HParams summaries written here: the TRAINING label added and the
        `shown` columns marked to be ticked on open; hparams.yaml then holds the row."""
        super().log_hyperparams(params)  # with no metrics, Lightning only keeps them for hparams.yaml
        if not metrics:
            return
        # Lightning writes hparams.yaml once, when it is missing: at the start, before there is a row to write
        save_hparams_to_yaml(Path(self.log_dir) / self.NAME_HPARAMS_FILE, self.hparams)
        self.log_metrics(metrics, step)
        row = sanitize_hparams(self, {**params, TRAINING: training_label(params)})
        experiment, start, end = tensorboard_hparams(row, metrics)
        value = experiment.value[0]
        data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in shown
        value.metadata.plugin_data.content = data.SerializeToString()
        writer = event_writer(self.experiment)
        for summary in (experiment, start, end):
            writer.add_summary(summary, step)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if "train/loss" in metrics and step is not None:
            self.train_losses.append((step, float(metrics["train/loss"])))
        super().log_metrics({tag_of(k): v for k, v in metrics.items()}, step)

    def finalize(self, status: str) -> None:
        if (experiment := open_experiment(self)) is not None:
            experiment.flush()

    def close(self, status: str) -> None:
        super().finalize(status)
