import numpy as np
import pytest

from ferops.errors import ParamsError
from ferops.inference import FER2013_CLASSES
from ferops.oversample import oversample, sampling_targets

CLASSES = list(FER2013_CLASSES)


def split(counts, seed=0):
    rng = np.random.default_rng(seed)
    label = np.repeat(np.arange(len(counts)), counts).astype(np.int8)
    n = len(label)
    return {
        "images": rng.integers(0, 256, size=(n, 6, 6), dtype=np.uint8),
        "label": label,
        "soft_label": np.eye(len(counts), dtype=np.float32)[label],
        "row_index": np.arange(n, dtype=np.int32),
        "classes": np.asarray(CLASSES, dtype="U16"),
    }


def test_targets_are_ratio_of_median():
    label = np.repeat(np.arange(7), [40, 4, 40, 70, 48, 31, 49])
    # median of the 7 counts is 40; half of it is 20
    assert sampling_targets(label, [1], 0.5) == {1: 20}
    assert sampling_targets(label, [1, 5], 1.0) == {1: 40, 5: 40}
    assert sampling_targets(label, [3], 0.5) == {}  # already above target


def test_random_oversampling_counts_and_fields_follow_images():
    data = split([40, 4, 40, 70, 48, 31, 49])
    out, report = oversample(data, classes=CLASSES, method="random", raise_classes=["disgust"],
                             target_ratio=0.5, seed=1)
    assert report["class_counts_after"]["disgust"] == 20
    assert report["rows_after"] == report["rows_before"] + 16
    assert np.bincount(out["label"]).tolist() == [40, 20, 40, 70, 48, 31, 49]
    # Originals come first, unchanged; copies carry the source image's row index.
    np.testing.assert_array_equal(out["images"][: len(data["label"])], data["images"])
    added = slice(len(data["label"]), None)
    np.testing.assert_array_equal(out["images"][added], data["images"][out["row_index"][added]])
    assert (out["label"][added] == 1).all()
    assert out["classes"].tolist() == CLASSES
    again, _ = oversample(data, classes=CLASSES, method="random", raise_classes=["disgust"],
                          target_ratio=0.5, seed=1)
    np.testing.assert_array_equal(again["row_index"], out["row_index"])


def test_smote_synthesises_new_images():
    data = split([40, 8, 40, 70, 48, 31, 49])
    out, report = oversample(data, classes=CLASSES, method="smote", raise_classes=["disgust"],
                             target_ratio=0.5, seed=0, smote_k_neighbors=3)
    n = len(data["label"])
    assert report["class_counts_after"]["disgust"] == 20
    assert out["synthetic"][n:].all() and not out["synthetic"][:n].any()
    assert (out["row_index"][n:] == -1).all()
    np.testing.assert_allclose(out["soft_label"][n:], np.eye(7)[[1] * 12])
    assert out["images"].dtype == np.uint8


def test_none_leaves_data_alone():
    data = split([40, 4, 40, 70, 48, 31, 49])
    out, report = oversample(data, classes=CLASSES, method="none")
    assert report["rows_after"] == report["rows_before"]
    np.testing.assert_array_equal(out["images"], data["images"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "adasyn"}, "oversample.method: 'adasyn' is not one of"),
    ({"raise_classes": ["contempt"]}, "unknown class"),
    ({"target_ratio": 0}, "positive number"),
])
def test_bad_params_are_clear(kwargs, message):
    with pytest.raises(ParamsError, match=message):
        oversample(split([40, 4, 40, 70, 48, 31, 49]), classes=CLASSES, **kwargs)
