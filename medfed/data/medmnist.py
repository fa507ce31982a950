"""MedMNIST v2 (Yang et al., Scientific Data 2023): every 2D and 3D set, at every size, from a local .npz.

The file holds the official keys train_/val_/test_ images and labels. Images are (N, H, W) for grey
2D sets, (N, H, W, 3) for RGB sets and (N, D, H, W) for 3D sets; labels (N, 1), or (N, 14) for
ChestMNIST's findings. The set is recognised from the file name (e.g. chestmnist_64.npz); an
unknown name falls back to what the labels show. Nothing is downloaded.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from medfed.data.dataset import DataSource, Samples
from medfed.errors import DataError
from medfed.types import Task

DOWNLOAD_HINT = ("download it from https://zenodo.org/records/10519652 (MedMNIST v2, CC BY 4.0) "
                 "and pass --data-file PATH/TO/<name>mnist[_SIZE].npz")
FLIPPED = frozenset({"breastmnist"})
KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")

_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
           "lung-left", "lung-right", "pancreas", "spleen")
# flag -> (task, class names), from the MedMNIST v2 paper's data descriptions.
SETS: dict[str, tuple[Task, tuple[str, ...]]] = {
    "pathmnist": (Task.MULTICLASS, ("adipose", "background", "debris", "lymphocytes", "mucus",
                                    "smooth-muscle", "normal-mucosa", "stroma", "tumour-epithelium")),
    "chestmnist": (Task.MULTILABEL, ("atelectasis", "cardiomegaly", "effusion", "infiltration",
                                     "mass", "nodule", "pneumonia", "pneumothorax", "consolidation",
                                     "edema", "emphysema", "fibrosis", "pleural-thickening",
                                     "hernia")),
    "dermamnist": (Task.MULTICLASS, ("actinic-keratoses", "basal-cell-carcinoma",
                                     "benign-keratosis", "dermatofibroma", "melanoma",
                                     "melanocytic-nevi", "vascular-lesions")),
    "octmnist": (Task.MULTICLASS, ("cnv", "dme", "drusen", "normal")),
    "pneumoniamnist": (Task.BINARY, ("normal", "pneumonia")),
    "retinamnist": (Task.ORDINAL, ("grade-0", "grade-1", "grade-2", "grade-3", "grade-4")),
    # Official labels are 0 malignant, 1 normal/benign; flipped at load (FLIPPED) so that, as for
    # every binary task, the last class is the finding and sensitivity is the malignant recall.
    "breastmnist": (Task.BINARY, ("normal-or-benign", "malignant")),
    "bloodmnist": (Task.MULTICLASS, ("basophil", "eosinophil", "erythroblast", "immature-granulocyte",
                                     "lymphocyte", "monocyte", "neutrophil", "platelet")),
    "tissuemnist": (Task.MULTICLASS, ("collecting-duct", "distal-tubule", "glomerular-endothelium",
                                      "interstitial-endothelium", "leukocytes", "podocytes",
                                      "proximal-tubule", "thick-ascending-limb")),
    "organamnist": (Task.MULTICLASS, _ORGANS),
    "organcmnist": (Task.MULTICLASS, _ORGANS),
    "organsmnist": (Task.MULTICLASS, _ORGANS),
    "organmnist3d": (Task.MULTICLASS, _ORGANS),
    "nodulemnist3d": (Task.BINARY, ("benign", "malignant")),
    "adrenalmnist3d": (Task.BINARY, ("normal", "hyperplasia")),
    "fracturemnist3d": (Task.MULTICLASS, ("buckle", "non-displaced", "displaced")),
    "vesselmnist3d": (Task.BINARY, ("vessel", "aneurysm")),
    "synapsemnist3d": (Task.BINARY, ("inhibitory", "excitatory")),
}


def load_medmnist(path: str | Path | None) -> DataSource:
    if path is None:
        raise DataError(f"--dataset medmnist needs --data-file: {DOWNLOAD_HINT}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MedMNIST file not found: {path}; {DOWNLOAD_HINT}")
    arrays = _read_npz(path)
    flag = _flag_of(path)
    is_3d = "3d" in flag or arrays["train_images"].ndim == 4 and arrays["train_images"].shape[-1] != 3
    task, names = SETS.get(flag) or _infer(arrays["train_labels"])
    pool = Samples.concat([_samples(arrays, "train", task, is_3d), _samples(arrays, "val", task, is_3d)])
    test = _samples(arrays, "test", task, is_3d)
    if flag in FLIPPED:
        pool, test = Samples(pool.x, 1 - pool.y), Samples(test.x, 1 - test.y)
    for split in (pool, test):
        _check_labels(split.y, task, len(names), path)
    return DataSource(name=flag or path.stem, task=task, class_names=names, pool=pool, test=test,
                      max_value=255.0 if pool.x.dtype == np.uint8 else float(pool.x.max() or 1))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:  # never unpickle a file from elsewhere
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{path} is not a MedMNIST file: missing keys {', '.join(missing)}; "
                                f"expected {', '.join(KEYS)}")
            arrays = {k: npz[k] for k in KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path} as .npz: {exc}") from None
    for split in ("train", "val", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim < 3 or len(images) != len(labels):
            raise DataError(f"{path}: {split}_images holds {len(images)} images of shape "
                            f"{images.shape[1:]} but {split}_labels {len(labels)} labels; one "
                            "label per image (N, H, W[, C]) is needed")
    return arrays


def _flag_of(path: Path) -> str:
    """'pneumoniamnist_224.npz' -> 'pneumoniamnist'."""
    return re.sub(r"_(28|64|128|224)$", "", path.stem.lower())


def _samples(arrays: dict[str, np.ndarray], split: str, task: Task, is_3d: bool) -> Samples:
    x = arrays[f"{split}_images"]
    if x.ndim == 3 or is_3d:
        x = x[:, None]  # grey 2D (N, H, W) or 3D (N, D, H, W): add the channel axis
    else:
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))  # RGB (N, H, W, 3) -> (N, 3, H, W)
    y = arrays[f"{split}_labels"]
    y = y.astype(np.float32) if task is Task.MULTILABEL else y.reshape(len(y), -1)[:, 0].astype(np.int64)
    return Samples(x, y)


def _infer(labels: np.ndarray) -> tuple[Task, tuple[str, ...]]:
    if labels.ndim == 2 and labels.shape[1] > 1:
        return Task.MULTILABEL, tuple(f"finding-{k}" for k in range(labels.shape[1]))
    n = int(labels.max()) + 1
    return (Task.BINARY if n <= 2 else Task.MULTICLASS), tuple(f"class-{k}" for k in range(max(n, 2)))


def _check_labels(y: np.ndarray, task: Task, n_classes: int, path: Path) -> None:
    if task is Task.MULTILABEL:
        if y.ndim != 2 or y.shape[1] != n_classes:
            raise DataError(f"{path}: expected {n_classes} findings per label row, got shape {y.shape}")
    elif y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"{path}: labels must lie in 0..{n_classes - 1}, got {y.min()}..{y.max()}")
