"""LayerRecorder: every layer's activations, gradients and weights of an MLP, recorded; no Lightning in it.

On a recorded step (step 0, before any update, then every `every_n_steps`) it captures the batch's pre-activations,
activations and their gradients (through hooks, or handed over by a caller that ran the pass itself), the weights
before the optimizer step, and afterwards computes all statistics on the device, crossing to the host once. On
other steps nothing is hooked. It writes TensorBoard scalars (`<group>/<quantity>/layer_0007`), the network-level
view (SIGNAL, with the theory's line in the sibling run <run>/theory; the depth-profile and heat-map figures a card
each), a custom-scalars layout (the story first, then one chart per quantity, a line per layer), histograms, and a
tidy `layer_stats.csv` (step, layer, group, quantity, value); with the init's theory, step 0 also gets the
predicted profiles beside the measured ones. `history` and `prediction` keep what was recorded: the figures and the
summary's step-0 diagnostics read them. It observes only: training is unchanged.

deepinit.observe.layer_stats.LayerStats feeds it from a Lightning Trainer; deepinit.batched feeds each member's
directly.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import histogram_raw

from deepinit.network.model import MLP
from deepinit.observe import stats
from deepinit.observe.figures import card_figures, depth_profile_figure, heatmap_figure, plt
from deepinit.observe.overlay import jacobian_measured, step0_overlay
from deepinit.results.summary import write_whole

if TYPE_CHECKING:
    from deepinit.settings.records import StatsSettings

FLOAT32_MAX = float(np.finfo(np.float32).max)
WHOLE_NETWORK = {"isometry"}  # groups with one value for the whole network, not one per layer
LAYER_DIGITS = 4  # layer_0007 at any depth: the same layer has the same tag in every run, depth 10 or 1,000
# The network-level view (TensorBoard's group "Signal", which sorts before the per-layer groups, docs/tensorboard.md):
# how much the signal's mean square grows or shrinks a layer, on average from the first layer to the last (log10:
# 0 keeps it, -2 shrinks it 100x a layer), so that runs of any depth share one scale; measured at every recorded
# step, and the theory's value at init under the same tag in the sibling run <run>/theory (THEORY_RUN): one card
# shows both. (group, quantity) -> (tag, forwards, or backwards as gradients flow: from the last layer to the first).
SIGNAL = {
    ("activations", "sqr"): ("Signal/activations: log10 growth of the mean square a layer", True),
    ("gradients", "sqr"): ("Signal/gradients: log10 growth of the mean square a layer, backwards", False),
}
THEORY_RUN = "theory"
# The card that joins the run's first screen (deepinit.run.logger.TAGS): what the init does to the signal
# (named to sort after the speed card: Time Series shows a card per run of an image, and the speed goes first)
OVERVIEW_CARDS = {"depth profile, activations": "Overview/the signal through depth: activations, theory dashed"}


class LayerRecorder:
    """Records one MLP's layer statistics at step 0 and every `every_n_steps` (see the module docstring).

    A step is recorded in three calls: `hook(step)` (its next forward and backward are captured by hooks) or
    `observe(step, ...)` (the caller hands over what it computed), then `before_update()` just before the
    optimizer's step, then `end_step()`. `open` names the model and where to write; `close` writes the figures.
    """

    def __init__(self, settings: StatsSettings, theory: dict[str, Any] | None = None) -> None:
        """settings: `stats.*` (checked there); theory: the init scheme as `theory.predict_model` takes it (scheme,
        gain, std, bias_std): when given, step 0 also logs the predicted profile, its finite-width band and
        ln(measured / predicted), and, up to stats.isometry_max_depth layers, the input-output Jacobian's spectrum
        (dynamical isometry) beside its theory."""
        self.every_n_steps = settings.every_n_steps
        self.histogram_every_n_steps = settings.histogram_every_n_steps
        self.groups = set(settings.groups)
        self.figures, self.profile_points, self.csv_file = settings.figures, settings.profile_points, settings.csv_file
        self.theory, self.isometry_max_depth = theory, settings.isometry_max_depth
        self.prediction: dict[str, np.ndarray] = {}  # theory curves at step 0, for the figures
        # (group, quantity) -> [(step, values per layer)], kept for the figures
        self.history: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = defaultdict(list)
        self._step: int | None = None
        # the coord check's reference: the first record's input and each layer's output on it (stats group coords)
        self._coord_first: tuple[Tensor, list[Tensor]] | None = None
        self._tag_cache: dict[tuple[str, str, int, int], list[str]] = {}

    # --- state: a resumed run's figures and theory span the whole run, and step 0 is not predicted again -------
    def state_dict(self) -> dict[str, Any]:
        # tensors, not numpy arrays: Lightning loads checkpoints with torch.load(weights_only=True)
        history = {key: [(step, torch.from_numpy(v)) for step, v in rows] for key, rows in self.history.items()}
        state = {"history": history, "prediction": {k: torch.from_numpy(v) for k, v in self.prediction.items()}}
        if self._coord_first is not None:  # a resumed run's changes are still measured from the same step-0 outputs
            x, outputs = self._coord_first
            state["coord_first"] = [x.cpu(), *(h.cpu() for h in outputs)]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = defaultdict(list)
        for key, rows in state_dict["history"].items():
            self.history[tuple(key)] = [(int(step), v.numpy()) for step, v in rows]
        self.prediction = {k: v.numpy() for k, v in state_dict["prediction"].items()}
        if "coord_first" in state_dict:
            x, *outputs = state_dict["coord_first"]
            self._coord_first = (x, list(outputs))

    # --- set-up -------------------------------------------------------------------------------------------
    def open(self, model: MLP, writer: SummaryWriter | None, out_dir: Path) -> None:
        """Record `model`; TensorBoard summaries go to writer (None: none), the CSV and figures to out_dir."""
        self.model = model
        self.pad = max(LAYER_DIGITS, len(str(model.depth)))
        self._tag_cache = {}
        self.writer, self.out_dir = writer, Path(out_dir)
        self._layout_written = False
        self._theory_writer: SummaryWriter | None = None
        self._csv = None
        if self.csv_file:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / self.csv_file
            is_new = not path.exists()
            if not is_new and self.history:  # resumed: rows past the checkpoint's last record are trained again
                _keep_rows_through(path, max(step for rows in self.history.values() for step, _ in rows))
            self._csv = open(path, "a", newline="")  # noqa: SIM115  (kept open across steps, closed by close())
            self._csv_writer = csv.writer(self._csv)
            if is_new:
                self._csv_writer.writerow(["step", "layer", "group", "quantity", "value"])

    def observes(self, step: int) -> bool:
        """Whether `step` is recorded: such a step must run eagerly, where hooks see its tensors."""
        return step % self.every_n_steps == 0

    # --- capture, only on recorded steps --------------------------------------------------------------------
    def hook(self, step: int) -> None:
        """Capture the model's next forward and backward through hooks (removed again by end_step)."""
        self._begin(step)
        model = self.model
        self._handles = [model.linears[0].register_forward_hook(self._input_hook)]
        self._handles += [tap.register_forward_hook(self._pre_hook(i)) for i, tap in enumerate(model.taps)]
        self._handles += [act.register_forward_hook(self._act_hook(i)) for i, act in enumerate(model.activations)]
        if model.norm != "none":  # the activation's input, normalized: its own group beside the pre-activations
            self._handles += [n.register_forward_hook(self._norm_hook(i)) for i, n in enumerate(model.norms)]

    def _begin(self, step: int) -> None:
        self._step = step
        depth = self.model.depth
        self._pre: list[Tensor | None] = [None] * depth
        self._post: list[Tensor | None] = [None] * (depth - 1)
        self._normed: list[Tensor | None] = [None] * (depth - 1) if self.model.norm != "none" else []
        self._grads: list[Tensor | None] = [None] * depth
        self._pending: dict[str, dict[str, Tensor]] = {}
        self._before: list[Tensor] | None = None
        self._jacobian: Tensor | None = None
        self._coord_now: list[Tensor] | None = None
        self._handles = []

    def observe(
        self, step: int, x: Tensor, pre: list[Tensor], post: list[Tensor], grads: list[Tensor] | None = None
    ) -> None:
        """For a caller that ran the forward and backward itself (batched training: one pass for every member,
        sliced): this step's input, each layer's pre-activation and activation, and the gradients of the
        pre-activations; then before_update and end_step as after `hook`."""
        self._begin(step)
        self._input, self._pre, self._post = x.detach(), [t.detach() for t in pre], [t.detach() for t in post]
        if grads is not None and "gradients" in self.groups:
            self._grads = [g.detach() for g in grads]

    def _input_hook(self, module, inputs, out: Tensor) -> None:
        self._input = inputs[0].detach()

    def _pre_hook(self, i: int):
        def hook(module, inputs, out: Tensor) -> None:
            self._pre[i] = out.detach()
            if out.requires_grad and "gradients" in self.groups:
                out.register_hook(lambda g: self._grads.__setitem__(i, g.detach()))

        return hook

    def _act_hook(self, i: int):
        def hook(module, inputs, out: Tensor) -> None:
            self._post[i] = out.detach()

        return hook

    def _norm_hook(self, i: int):
        def hook(module, inputs, out: Tensor) -> None:
            self._normed[i] = out.detach()

        return hook

    def before_update(self) -> None:
        """The weights and their gradients as the optimizer is about to change them."""
        if self._step is None:
            return
        weights = [lin.weight for lin in self.model.linears]
        if "updates" in self.groups:
            self._before = [w.detach().clone() for w in weights]
        if "weight_grads" in self.groups and all(w.grad is not None for w in weights):
            self._pending = stats.weight_stats([w.detach() for w in weights], [w.grad.detach() for w in weights])
        self._unhook()  # forward and backward are done; the Jacobian's passes below must not be captured
        self._coord_now = self._coord_outputs()  # before the update: the weights this step's outputs came from
        if self._predicting():  # the Jacobian of the initialization, before the first update changes it
            self._jacobian = jacobian_measured(self.model, self._post[0], self.isometry_max_depth)

    def _unhook(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _predicting(self) -> bool:
        """Whether this step gets the theory beside it: the first recorded one, with the init's theory given."""
        return self.theory is not None and not self.prediction and self._post[0] is not None

    def end_step(self) -> None:
        """Compute the step's statistics (on the device, one host transfer) and write them."""
        if self._step is None:
            return
        self._unhook()
        step, self._step = self._step, None
        weights = [lin.weight.detach() for lin in self.model.linears]
        found: dict[str, dict[str, Tensor]] = {}
        if all(t is not None for t in self._pre + self._post + self._normed):
            found |= stats.forward_stats(self._pre, self._post, self.model.activation, self._normed)
        if all(g is not None for g in self._grads):  # absent when the step was skipped (divergence)
            found |= stats.gradient_stats(self._grads)
        # Weights as they were when the batch was seen (before the update) where captured, else as they are.
        found |= self._pending or stats.weight_stats(weights)
        if self._before is not None:
            before_std = self._pending["weights"]["std"] if self._pending else None
            found |= stats.update_stats(self._before, weights, before_std)
        if "coords" in self.groups and all(t is not None for t in self._pre):
            found |= self._coords()
        found = {g: q for g, q in found.items() if g in self.groups}
        predicting = self._predicting() and "preactivations" in found
        if predicting:
            found |= self._predict(found)
        self._record(step, found)
        if predicting:  # the init's picture against its theory, on the first screen from the first step on
            self._write_cards(step, heat_maps=False)
        if self.histogram_every_n_steps and step % self.histogram_every_n_steps == 0:
            self._histograms(step)
        self._pre = self._post = self._normed = self._grads = self._before = self._input = None  # free the batch

    def _coord_outputs(self) -> list[Tensor] | None:
        """Each layer's output now on the first coord record's input: this step's own where it saw that input (the
        coord check trains on one fixed batch), else from a forward pass on it, outside training (no grad; the
        normalization's running statistics put back). None where there is nothing to compare with yet."""
        if "coords" not in self.groups or self._coord_first is None or any(t is None for t in self._pre):
            return None
        first_x = self._coord_first[0].to(self._input.device)
        if first_x.shape == self._input.flatten(1).shape and torch.equal(first_x, self._input.flatten(1)):
            return self._pre
        outputs: list[Tensor] = []
        handles = [tap.register_forward_hook(lambda m, i, out: outputs.append(out.detach())) for tap in self.model.taps]
        buffers = [b.clone() for b in self.model.buffers()]
        try:
            with torch.no_grad():
                self.model(first_x)
        finally:
            for handle in handles:
                handle.remove()
            with torch.no_grad():
                for b, kept in zip(self.model.buffers(), buffers, strict=True):
                    b.copy_(kept)
        return outputs

    def _coords(self) -> dict[str, dict[str, Tensor]]:
        """The coords group: each layer's output size (this step's batch) and its change since the first record."""
        if self._coord_first is None:
            self._coord_first = (self._input.flatten(1).clone(), [h.clone() for h in self._pre])
            now = self._pre
        else:
            now = self._coord_now if self._coord_now is not None else self._coord_outputs()
        return stats.coord_stats(self._pre, [h.to(now[0].device) for h in self._coord_first[1]], now)

    def _predict(self, found: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
        """Theory at the first logging step (the initialization), next to what was just measured."""
        if self._jacobian is None:  # the update was skipped (a diverged step): the weights are the init's still
            self._jacobian = jacobian_measured(self.model, self._post[0], self.isometry_max_depth)
        self.prediction, groups, self.theory_note = step0_overlay(
            self.model, self._input, found, self.theory, self._jacobian
        )
        self._jacobian = None
        return groups

    # --- output ----------------------------------------------------------------------------------------------
    def _record(self, step: int, found: dict[str, dict[str, Tensor]]) -> None:
        keys = [(g, q) for g, quantities in found.items() for q in quantities]
        tensors = [found[g][q].double() for g, q in keys]
        values = torch.cat(tensors).cpu().numpy() if tensors else np.array([])  # the one host transfer
        offsets = np.cumsum([0] + [len(t) for t in tensors])
        scalars = []
        found_values = {}
        rows: list[tuple[int, int, str, str, float]] = []
        for (group, quantity), a, b in zip(keys, offsets[:-1], offsets[1:], strict=True):
            per_layer = found_values[(group, quantity)] = values[a:b]
            self.history[(group, quantity)].append((step, per_layer))
            first = 0 if group in WHOLE_NETWORK else 1  # whole-network values are layer 0 in the CSV
            tags = self._tags(group, quantity, first, int(b - a))
            for layer, (tag, value) in enumerate(zip(tags, per_layer.tolist(), strict=True), start=first):
                # Non-finite (or beyond float32, which TensorBoard stores): in the CSV only, not the charts.
                if math.isfinite(value) and abs(value) < FLOAT32_MAX:
                    scalars.append(Summary.Value(tag=tag, simple_value=value))
                rows.append((step, layer, group, quantity, value))
        if self._csv is not None:
            self._csv_writer.writerows(rows)
            self._csv.flush()
        scalars += [Summary.Value(tag=tag, simple_value=value) for tag, value in signal_view(found_values).items()]
        if self.writer is not None:
            if not self._layout_written:
                self.writer.add_custom_scalars(self.layout(keys))
                self._layout_written = True
            # One event holding every layer's values: a thousand separate add_scalar calls would each queue
            # an event for TensorBoard's writer thread and make a logging step cost a tenth of a second.
            self.writer.file_writer.add_summary(Summary(value=scalars), step)
            self._write_theory_signal(step)

    def _write_theory_signal(self, step: int) -> None:
        """The theory's SIGNAL values at init into <run>/theory at `step`, every recorded step from the prediction on:
        a flat line beside the measured one in its card (two points alone would be dropped as TensorBoard's
        outliers)."""
        if self.writer is None or not self.prediction:
            return
        view = signal_view({key: self.prediction.get(f"{key[0]}_{key[1]}") for key in SIGNAL})
        if view:
            if self._theory_writer is None:
                self._theory_writer = SummaryWriter(str(self.out_dir / THEORY_RUN))
            values = [Summary.Value(tag=tag, simple_value=value) for tag, value in view.items()]
            self._theory_writer.file_writer.add_summary(Summary(value=values), step)

    def _tag(self, group: str, quantity: str, layer: int) -> str:
        return f"{group}/{quantity}" if group in WHOLE_NETWORK else f"{group}/{quantity}/layer_{layer:0{self.pad}d}"

    def _tags(self, group: str, quantity: str, first: int, n: int) -> list[str]:
        """The tags of a quantity's n values from layer `first` on, made once (a record writes ~1,000 of them)."""
        key = (group, quantity, first, n)
        tags = self._tag_cache.get(key)
        if tags is None:
            tags = self._tag_cache[key] = [self._tag(group, quantity, layer) for layer in range(first, first + n)]
        return tags

    def _histograms(self, step: int) -> None:
        if self.writer is None:
            return
        outputs = [*self._post, self._pre[-1]]  # each layer's output; the last one is the logits
        parts = {"activations": outputs}
        if all(g is not None for g in self._grads):
            parts["gradients"] = self._grads
        rows = torch.cat([stats.histograms(t) for t in parts.values()]).cpu().numpy()  # one host transfer
        values = []
        for (group, layer), row in zip(
            [(g, i) for g, ts in parts.items() for i in range(1, len(ts) + 1)], rows, strict=True
        ):
            lo, hi, num, total, squares, counts = row[0], row[1], row[2], row[3], row[4], row[5:]
            if num == 0:
                continue
            limits = (lo + (hi - lo) * np.arange(1, len(counts) + 1) / len(counts)).tolist()
            tag = f"hist_{group}/layer_{layer:0{self.pad}d}"
            values += histogram_raw(tag, lo, hi, num, total, squares, limits, counts.tolist()).value
        self.writer.file_writer.add_summary(Summary(value=values), step)

    @staticmethod
    def layout(keys: Sequence[tuple[str, str]]) -> dict[str, dict[str, list]]:
        """TensorBoard custom-scalars layout: the story first (the losses, the accuracies, the speed; the signal's
        growth over depth measured beside its theory, one chart each), then one chart per quantity with a line per
        layer."""
        layout: dict[str, dict[str, list]] = {
            "Overview": {
                "loss: train, validation": ["Multiline", [r"^Overview/loss", r"^val/loss$"]],
                "accuracy: train, validation": ["Multiline", [r"^Overview/accuracy", r"^train/acc$"]],
                "speed: accuracy on the first validation images": ["Multiline", [r"^Overview/speed"]],
            },
        }
        signal = {tag: ["Multiline", [rf"^{re.escape(tag)}$"]] for key, (tag, _) in SIGNAL.items() if key in keys}
        if signal:  # a run that records neither group (the coord check's) has no Signal charts
            layout["Signal (each run's theory at init: its run /theory)"] = signal
        for group, quantity in keys:
            layers = "" if group in WHOLE_NETWORK else r"/layer_\d+"
            layout.setdefault(group, {})[f"{group}/{quantity}"] = ["Multiline", [rf"^{group}/{quantity}{layers}$"]]
        return layout

    def close(self, step: int) -> None:
        """End the record at `step`: the CSV closed, the depth-profile and heat-map figures written."""
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        if self._theory_writer is not None:
            self._theory_writer.close()
            self._theory_writer = None
        if not (self.figures and self.history):
            return
        figures_dir = self.out_dir / "figures"
        figures_dir.mkdir(exist_ok=True)
        for name, fig in (
            (
                "depth_profile",
                depth_profile_figure(self.history, self.model.activation, self.profile_points, self.prediction),
            ),
            ("heatmap", heatmap_figure(self.history)),
        ):
            if fig is not None:  # every panel, for reading at full size; TensorBoard gets the cards
                fig.savefig(figures_dir / f"{name}.png", dpi=110)
                plt.close(fig)
        self._write_cards(step, heat_maps=True)

    def _write_cards(self, step: int, heat_maps: bool) -> None:
        """The network-level figures, one TensorBoard card each (figures.card_figures): in the group Signal, but for
        OVERVIEW_CARDS."""
        if self.writer is None or not self.figures:
            return
        for name, fig in card_figures(self.history, self.profile_points, self.prediction, heat_maps).items():
            self.writer.add_figure(OVERVIEW_CARDS.get(name, f"Signal/{name}"), fig, step)  # closes the figure
        self.writer.flush()


def signal_view(per_layer: dict[tuple[str, str], np.ndarray | None]) -> dict[str, float]:
    """SIGNAL's values from per-layer mean squares (measured, or the theory's curves): the mean log10 growth a
    layer, forwards from the first layer (backwards from the last, for gradients), over the layers where the signal
    is still a positive number: a signal that overflows or underflows (N(0, 1), 0.01) still has its growth."""
    out = {}
    for key, (tag, forward) in SIGNAL.items():
        curve = per_layer.get(key)
        if curve is None:
            continue
        values = np.asarray(curve, dtype=float)[:: 1 if forward else -1]
        usable = np.isfinite(values) & (values > 0)
        n = len(values) if usable.all() else int(np.argmin(usable))  # up to the first layer that is not a number
        if n >= 2:
            out[tag] = float(np.log10(values[n - 1] / values[0])) / (n - 1)
    return out


def _keep_rows_through(path: Path, last_step: int) -> None:
    """Drop the CSV rows recorded after `last_step` (a run killed after its last checkpoint recorded steps that its
    resumption records again), written whole or not at all."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0], *(row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) <= last_step)]
    if len(kept) < len(rows):
        text = io.StringIO(newline="")
        csv.writer(text).writerows(kept)
        write_whole(path, text.getvalue().encode())
