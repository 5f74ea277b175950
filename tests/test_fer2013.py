import gzip

import numpy as np
import pandas as pd
import pytest

from ferops.errors import DataError
from ferops.fer2013 import USAGES, class_counts, parse_pixels, read_fer2013, scan_pixels

KNOWN_COUNTS = {  # SOURCES.md: per Usage, per class (angry..neutral)
    "Training": [3995, 436, 4097, 7215, 4830, 3171, 4965],
    "PublicTest": [467, 56, 496, 895, 653, 415, 607],
    "PrivateTest": [491, 55, 528, 879, 594, 416, 626],
}


@pytest.fixture(scope="module")
def real_rows(datasets_dir) -> list[str]:
    """The header and 40 real data rows of FER2013 (from each split), as CSV lines."""
    with gzip.open(datasets_dir / "fer2013.csv.gz", "rt") as handle:
        lines = handle.read().splitlines()
    picks = list(range(1, 21)) + list(range(28710, 28720)) + list(range(35878, 35888))
    return [lines[0]] + [lines[i] for i in picks]


def write_csv(tmp_path, lines):
    path = tmp_path / "fer2013.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_parse_pixels_round_trip_synthetic():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 4), dtype=np.uint8)
    strings = pd.Series([" ".join(map(str, image.ravel())) for image in images])
    np.testing.assert_array_equal(parse_pixels(strings, image_size=4), images)


def test_scan_counts_values_and_parses_only_well_formed_rows():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, 16), np.full(16, 7), np.r_[np.full(12, 100), np.full(4, 255)]]
    texts = [" ".join(map(str, image)) for image in images]
    bad = ["", "0 255", texts[0].replace(" ", "  ", 1), texts[1].replace("7", "x", 1),
           texts[1].replace("7", "-1", 1), texts[1].replace("7", "300", 1),
           texts[1].replace("7", "07", 1)]
    scan = scan_pixels(pd.Series([texts[0], *bad, texts[1], None, texts[2]]), image_size=4)
    assert scan.counts.tolist() == [16, 0, 2, 17, 16, 16, 16, 16, 16, 0, 16]
    assert scan.valid.tolist() == [True] + [False] * 7 + [True, False, True]
    # The images of the valid rows, in row order.
    np.testing.assert_array_equal(scan.images.reshape(3, 16), np.stack(images))
    assert scan.images.dtype == np.uint8


def test_parse_pixels_refuses_leading_zeros_the_validation_refuses_too():
    strings = pd.Series(["1 2 3 4", "1 02 3 4"])
    with pytest.raises(DataError, match=r"integers 0\.\.255 .* row 1 do not match"):
        parse_pixels(strings, image_size=2)


def test_class_counts_names_unlabelled_rows_only_when_present():
    classes = ["angry", "disgust", "fear"]
    assert class_counts(np.array([0, 2, 2]), classes) == {"angry": 1, "disgust": 0, "fear": 2}
    assert class_counts(np.array([0, -1, 2, -1]), classes) == {
        "angry": 1, "disgust": 0, "fear": 1, "(no label)": 2}


def test_read_small_real_subset(tmp_path, real_rows):
    fer = read_fer2013(write_csv(tmp_path, real_rows))
    assert fer.images.shape == (40, 48, 48) and fer.images.dtype == np.uint8
    assert [USAGES[u] for u in fer.usage[[0, 20, 39]]] == ["Training", "PublicTest", "PrivateTest"]
    # Row 0 of the real file is an angry face whose first pixels are 70 80 82.
    assert fer.label[0] == 0 and fer.images[0, 0, :3].tolist() == [70, 80, 82]
    assert fer.row_index.tolist() == list(range(40))


@pytest.mark.slow
def test_full_fer2013_has_the_known_counts(raw_dir):
    fer = read_fer2013(raw_dir / "fer2013.csv")
    assert len(fer) == 35887
    for index, usage in enumerate(USAGES):
        counts = np.bincount(fer.label[fer.usage == index], minlength=7).tolist()
        assert counts == KNOWN_COUNTS[usage], usage
    # 12 constant images, as SOURCES.md says.
    assert int((fer.images.reshape(len(fer), -1).std(axis=1) == 0).sum()) == 12


def _alter(real_rows, row, column, value):
    lines = list(real_rows)
    fields = lines[row + 1].split(",")
    fields[column] = value
    lines[row + 1] = ",".join(fields)
    return lines


def test_row_with_2303_pixels_names_the_row(tmp_path, real_rows):
    pixels = real_rows[8].split(",")[1]
    short = " ".join(pixels.split()[:-1])
    path = write_csv(tmp_path, _alter(real_rows, 7, 1, short))
    with pytest.raises(DataError, match=r"expected 2304 .* row 7 .*has 2303"):
        read_fer2013(path)


def test_emotion_9_names_the_row(tmp_path, real_rows):
    path = write_csv(tmp_path, _alter(real_rows, 3, 0, "9"))
    with pytest.raises(DataError, match=r"'emotion': expected an integer in 0\.\.6, row 3 .*'?9"):
        read_fer2013(path)


def test_unknown_usage_names_the_row(tmp_path, real_rows):
    path = write_csv(tmp_path, _alter(real_rows, 25, 2, "Validation"))
    with pytest.raises(DataError, match=r"'Usage': expected one of .* row 25 .*'Validation'"):
        read_fer2013(path)


def test_pixel_value_above_255_is_refused(tmp_path, real_rows):
    pixels = real_rows[3].split(",")[1].split()
    pixels[100] = "300"
    path = write_csv(tmp_path, _alter(real_rows, 2, 1, " ".join(pixels)))
    with pytest.raises(DataError, match=r"above 255 in row 2"):
        read_fer2013(path)


def test_non_integer_token_is_refused(tmp_path, real_rows):
    pixels = real_rows[5].split(",")[1].split()
    pixels[10] = "1.5"
    path = write_csv(tmp_path, _alter(real_rows, 4, 1, " ".join(pixels)))
    with pytest.raises(DataError, match=r"integers 0\.\.255 .* row 4"):
        read_fer2013(path)


def test_wrong_header_is_refused(tmp_path, real_rows):
    path = write_csv(tmp_path, ["label,pixels,Usage"] + real_rows[1:])
    with pytest.raises(DataError, match=r"expected columns \['emotion', 'pixels', 'Usage'\]"):
        read_fer2013(path)
