"""The data sets: onto disk, then into memory.

- provision.py: getting MNIST / Fashion-MNIST onto disk, offline, hash-checked; the data sets' sizes (DATASETS);
- datamodule.py: the DataModule: the whole data set in memory, batches by slicing (TensorBatches).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # conf/data's `_target_` names the DataModule deepinit.data.MNISTDataModule, as before data/ was a package: a
    # sweep compares its jobs' configs with an earlier run's, and a changed target would rerun every finished job.
    # Lazily, so that importing data.provision costs no Lightning import.
    if name == "MNISTDataModule":
        from deepinit.data.datamodule import MNISTDataModule

        return MNISTDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
