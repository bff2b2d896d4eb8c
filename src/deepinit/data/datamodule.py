"""MNIST / Fashion-MNIST as whole tensors in memory, batched by slicing (no per-sample transforms).

The study trains hundreds of small models; a per-sample PIL pipeline would make every one of them
input-bound. The DataModule normalizes the full data set once, moves it to the training device, and
hands out shuffled slices.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
import torchvision
from torch import Tensor

from deepinit.data.provision import ensure_dataset

log = logging.getLogger(__name__)

# Lightning warns that a loader without its state_dict interface resumes mid-epoch unreliably; this one goes on at the
# batch it stopped at (MNISTDataModule.train_dataloader, which says so instead), and a resumed run ends as the
# uninterrupted one (tests/test_stopping.py).
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")


class TensorBatches:
    """An iterable of (x, y) mini-batches over tensors; reshuffled every pass from a seeded generator.

    Under DDP each of `world` processes takes every `world`-th sample of the same permutation (all ranks share
    the seed), cut to equal length so that every rank runs the same number of steps."""

    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.rank, self.world = rank, world
        self.generator = torch.Generator().manual_seed(seed)
        self._skip = 0  # batches of the next pass already trained before an interruption (resume_at)

    def resume_at(self, passes: int, batches: int) -> None:
        """Go on as the loader of an interrupted run: its first `passes` shuffles are drawn again (the run trained
        on them), and the next pass, the one it was in, starts after its first `batches` batches."""
        for _ in range(passes):
            self.next_order()
        self._skip = batches

    def _size(self) -> int:
        return len(self.x) // self.world

    def __len__(self) -> int:
        return -(-self._size() // self.batch_size)

    def next_order(self) -> Tensor | None:
        """The sample indices of the next pass, on the data's device (advances the shuffle generator); None
        when the pass is in order over all samples."""
        if not (self.shuffle or self.world > 1):
            return None
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        return order[self.rank :: self.world][: self._size()].to(self.x.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.next_order()
        x, y = (self.x, self.y) if order is None else (self.x[order], self.y[order])
        skip, self._skip = self._skip, 0
        for start in range(skip * self.batch_size, len(x), self.batch_size):
            yield x[start : start + self.batch_size], y[start : start + self.batch_size]


class MNISTDataModule(L.LightningDataModule):
    """60k/10k MNIST (or Fashion-MNIST) with `val_size` images held out of the 60k by a fixed seed."""

    def __init__(
        self,
        root: str = "data",
        dataset: str = "MNIST",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        shuffle: bool = True,
        mean: float = 0.1307,
        std: float = 0.3081,
        download: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.root = Path(root)
        self.dataset, self.batch_size, self.eval_batch_size = dataset, batch_size, eval_batch_size
        self.val_size, self.split_seed, self.shuffle_seed = val_size, split_seed, shuffle_seed
        self.shuffle = shuffle
        self.mean, self.std, self.download = mean, std, download
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}

    def prepare_data(self) -> None:
        ensure_dataset(self.root, self.dataset, try_download=self.download)

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        ds = getattr(torchvision.datasets, self.dataset)(str(self.root), train=train, download=False)
        x = (ds.data.flatten(1).float() / 255.0 - self.mean) / self.std
        return x, ds.targets.long()

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.prepare_data()  # cheap when present (a hash check); lets setup() work outside a Trainer
            x, y = self._load(train=True)
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.split_seed))
            val, train = order[: self.val_size], order[self.val_size :]
            self.splits = {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": self._load(train=False)}
        # Move (once) to where training runs, so batches never cross the host-device boundary.
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self.splits.items()}

    def sample_batch(self, size: int, seed: int = 0) -> Tensor:
        """A fixed random batch of training inputs (for data-dependent init such as LSUV)."""
        x = self.splits["train"][0]
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:size]
        return x[pick.to(x.device)]

    def train_dataloader(self) -> TensorBatches:
        # data.batch_size is per process: under DDP on k devices a step sees k * batch_size samples
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        batches = TensorBatches(
            *self.splits["train"], self.batch_size, self.shuffle, seed=self.shuffle_seed, rank=rank, world=world
        )
        loop = self.trainer.fit_loop if self.trainer is not None else None
        if loop is not None and loop.restarting:
            # Resumed from a checkpoint taken mid-epoch (Ctrl-C): Lightning has restored its loops' progress and
            # redoes the batch it was in, so the data goes on from the first batch not yet trained (processed:
            # the batch whose step had finished counts, as Lightning then counts it), in the same shuffle.
            epoch, batch = loop.epoch_progress.current.completed, loop.epoch_loop.batch_progress.current.processed
            batches.resume_at(epoch, batch)
            (log.info if self.trainer.is_global_zero else log.debug)(
                f"resuming at step {self.trainer.global_step} (epoch {epoch}, batch {batch}): the weights, the"
                " optimizer state and the shuffled batches are restored, so it ends as the uninterrupted run would"
            )
        return batches

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(*self.splits["val"], self.eval_batch_size)

    def test_dataloader(self) -> TensorBatches:
        return TensorBatches(*self.splits["test"], self.eval_batch_size)
