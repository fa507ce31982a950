"""The MedMNIST loader on tiny files made in tmp_path, and on the real PneumoniaMNIST when
present."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from medfed.config import DataConfig
from medfed.data.medmnist import KEYS, load_medmnist
from medfed.data.sources import load_source
from medfed.errors import DataError
from medfed.types import Task
from tests.medmnist_files import write_medmnist

# kind -> (pool/test image shape after the N axis, task, number of class names)
EXPECTED = {
    "grey2d": ((1, 28, 28), Task.BINARY, 2, "pneumoniamnist"),
    "rgb": ((3, 28, 28), Task.ORDINAL, 5, "retinamnist"),
    "3d": ((1, 28, 28, 28), Task.BINARY, 2, "adrenalmnist3d"),
    "multilabel": ((1, 28, 28), Task.MULTILABEL, 14, "chestmnist"),
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_each_kind_loads_with_its_shape_channels_task_and_classes(medmnist_npz, kind):
    path, arrays = medmnist_npz(kind)
    shape, task, n_classes, name = EXPECTED[kind]
    source = load_medmnist(path)
    assert source.name == name
    assert source.task is task
    assert len(source.class_names) == n_classes == source.num_outputs
    assert source.pool.x.shape == (20 + 6, *shape)
    assert source.test.x.shape == (10, *shape)
    assert source.in_channels == shape[0]
    assert source.spatial_dims == len(shape) - 1
    assert source.pool.x.dtype == np.uint8 and source.max_value == 255.0
    if task is Task.MULTILABEL:
        assert source.pool.y.shape == (26, 14) and source.pool.y.dtype == np.float32
    else:
        assert source.pool.y.shape == (26,) and source.pool.y.dtype == np.int64
    assert source.groups is None  # MedMNIST has no natural sites


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_pool_is_train_then_val_and_test_is_the_official_test_split(medmnist_npz, kind):
    path, arrays = medmnist_npz(kind)
    source = load_medmnist(path)

    def channel_first(x):
        return np.moveaxis(x, -1, 1) if kind == "rgb" else x[:, None]

    np.testing.assert_array_equal(source.pool.x[:20], channel_first(arrays["train_images"]))
    np.testing.assert_array_equal(source.pool.x[20:], channel_first(arrays["val_images"]))
    np.testing.assert_array_equal(source.test.x, channel_first(arrays["test_images"]))
    if kind == "multilabel":
        np.testing.assert_array_equal(source.pool.y[:20], arrays["train_labels"])
    else:
        np.testing.assert_array_equal(source.pool.y[20:], arrays["val_labels"][:, 0])
        np.testing.assert_array_equal(source.test.y, arrays["test_labels"][:, 0])


def test_rgb_channels_are_moved_first_without_mixing(medmnist_npz):
    path, arrays = medmnist_npz("rgb")
    source = load_medmnist(path)
    for c in range(3):
        np.testing.assert_array_equal(source.pool.x[:20, c], arrays["train_images"][..., c])


@pytest.mark.parametrize("file_name",
                         ["retinamnist_28.npz", "retinamnist_64.npz", "RetinaMNIST.npz"])
def test_the_set_is_recognised_from_the_file_name_at_any_size(medmnist_npz, file_name):
    path, _ = medmnist_npz("rgb", name=file_name)
    source = load_medmnist(path)
    assert source.name == "retinamnist" and source.task is Task.ORDINAL


def test_an_unknown_name_falls_back_to_what_the_labels_show(tmp_path):
    path = tmp_path / "mydata.npz"
    write_medmnist(path, (8, 8), 1, 3)
    source = load_medmnist(path)
    assert source.task is Task.MULTICLASS
    assert source.class_names == ("class-0", "class-1", "class-2")
    path = tmp_path / "findings.npz"
    write_medmnist(path, (8, 8), 5, 2)
    source = load_medmnist(path)
    assert source.task is Task.MULTILABEL and len(source.class_names) == 5


def test_the_data_source_registry_reads_the_data_config(medmnist_npz):
    path, _ = medmnist_npz("grey2d")
    source = load_source(DataConfig(dataset="medmnist", data_file=str(path)), seed=0)
    assert source.name == "pneumoniamnist" and len(source.pool) == 26


# --- errors ------------------------------------------------------------------------------------

def test_a_missing_file_says_where_to_download_it(tmp_path):
    with pytest.raises(DataError) as info:
        load_medmnist(tmp_path / "pneumoniamnist.npz")
    message = str(info.value)
    assert "not found" in message and str(tmp_path / "pneumoniamnist.npz") in message
    assert "zenodo.org" in message and "--data-file" in message


def test_no_file_given_says_where_to_download_it():
    with pytest.raises(DataError, match="zenodo.org"):
        load_medmnist(None)


def test_missing_keys_are_named(tmp_path):
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(path, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros((2, 1)))
    with pytest.raises(DataError) as info:
        load_medmnist(path)
    assert "missing keys" in str(info.value)
    assert "val_images" in str(info.value) and "test_labels" in str(info.value)


def test_labels_out_of_range_for_the_set_are_refused(tmp_path):
    path = tmp_path / "pneumoniamnist.npz"
    write_medmnist(path, (8, 8), 1, 3)  # three classes in a binary set
    with pytest.raises(DataError, match="labels must lie in 0..1"):
        load_medmnist(path)


def test_a_file_that_is_not_npz_is_a_data_error(tmp_path):
    path = tmp_path / "pneumoniamnist.npz"
    path.write_bytes(b"this is not a zip file at all")
    with pytest.raises(DataError, match="cannot read"):
        load_medmnist(path)


# An object that records being unpickled: loading a file from elsewhere must never run it.
UNPICKLED: list[str] = []


def _record_unpickling(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Payload:
    def __reduce__(self):
        return (_record_unpickling, ("payload ran",))


def test_an_npz_with_pickled_object_arrays_is_refused_without_unpickling(tmp_path):
    arrays = {k: np.zeros((2, 4, 4) if "images" in k else (2, 1), np.uint8) for k in KEYS}
    arrays["train_labels"] = np.array([Payload(), Payload()], dtype=object)
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(path, **arrays)  # numpy pickles the object array inside the zip
    UNPICKLED.clear()
    with pytest.raises(DataError, match="cannot read"):
        load_medmnist(path)
    assert UNPICKLED == []


def test_a_raw_pickle_named_npz_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "pneumoniamnist.npz"
    path.write_bytes(pickle.dumps({"train_images": Payload()}))
    UNPICKLED.clear()
    with pytest.raises(DataError):
        load_medmnist(path)
    assert UNPICKLED == []


# --- the real file -----------------------------------------------------------------------------

def test_the_shared_pneumoniamnist_file_has_the_official_split_sizes(pneumoniamnist_file: Path):
    source = load_medmnist(pneumoniamnist_file)
    assert source.name == "pneumoniamnist" and source.task is Task.BINARY
    assert len(source.pool) == 4708 + 524
    assert len(source.test) == 624
    assert source.pool.x.shape[1:] == (1, 28, 28)
    assert set(np.unique(source.pool.y)) == {0, 1}


def test_test_labels_out_of_range_are_refused_at_load(tmp_path):
    path = tmp_path / "pneumoniamnist.npz"
    arrays = write_medmnist(path, (8, 8), 1, 2)
    arrays["test_labels"][0] = 7
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="labels must lie in 0..1"):
        load_medmnist(path)


def test_breastmnist_is_flipped_so_that_malignant_is_the_positive_class(tmp_path):
    path = tmp_path / "breastmnist.npz"
    arrays = write_medmnist(path, (8, 8), 1, 2)
    source = load_medmnist(path)
    assert source.class_names == ("normal-or-benign", "malignant")
    official = np.concatenate([arrays["train_labels"], arrays["val_labels"]]).ravel()
    np.testing.assert_array_equal(source.pool.y, 1 - official)
    np.testing.assert_array_equal(source.test.y, 1 - arrays["test_labels"].ravel())
