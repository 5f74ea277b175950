import numpy as np
import pytest

from ferops.errors import DataError
from ferops.ferplus import STATUS_NAMES, VOTE_COLUMNS, majority_winner, read_ferplus, relabel


def votes(**counts):
    row = np.zeros(len(VOTE_COLUMNS), dtype=np.uint8)
    for name, count in counts.items():
        row[VOTE_COLUMNS.index(name)] = count
    return row


def test_majority_rule_on_hand_written_rows():
    rows = np.stack([
        votes(happiness=6, neutral=4),            # 60 % happiness -> happy
        votes(happiness=5, neutral=5),            # a tie: no majority
        votes(happiness=5, neutral=4, fear=1),    # single fear vote dropped: 5/9 > 50 %
        votes(sadness=4, anger=3, fear=3),        # 40 %: no majority
        votes(unknown=7, neutral=3),              # winner unknown -> dropped
        votes(NF=10),                             # not a face
        votes(contempt=6, disgust=4),             # contempt -> dropped in 7 classes
        votes(surprise=1, fear=1, anger=1),       # only single votes: nothing left
        votes(anger=2, disgust=1),                # 2 of 2 remaining -> angry
    ])
    label, status, soft = relabel(rows)
    assert label.tolist() == [3, -1, 3, -1, -1, -1, -1, -1, 0]
    assert [STATUS_NAMES[s] for s in status] == [
        "labelled", "no_majority", "labelled", "no_majority", "unknown", "not_a_face",
        "contempt", "no_majority", "labelled",
    ]
    # Soft labels: FER2013 order (angry, disgust, fear, happy, sad, surprise, neutral),
    # single votes removed, normalised over the 7 emotions.
    np.testing.assert_allclose(soft[0], [0, 0, 0, 0.6, 0, 0, 0.4])
    np.testing.assert_allclose(soft[2], [0, 0, 0, 5 / 9, 0, 0, 4 / 9], rtol=1e-6)
    np.testing.assert_allclose(soft[7], np.zeros(7))
    np.testing.assert_allclose(soft[8], [1, 0, 0, 0, 0, 0, 0])


def test_single_votes_count_when_not_dropped():
    row = votes(happiness=5, neutral=4, fear=1)[None]
    assert majority_winner(row, drop_single_votes=True).tolist() == [VOTE_COLUMNS.index("happiness")]
    assert majority_winner(row, drop_single_votes=False).tolist() == [-1]  # 5/10 is not > 50 %


def test_real_ferplus_file_joins_by_position(raw_dir):
    import pandas as pd

    usage = pd.read_csv(raw_dir / "fer2013.csv", usecols=["Usage"])["Usage"].to_numpy(dtype=str)
    counts, has_name = read_ferplus(raw_dir / "fer2013new.csv", usage)
    assert counts.shape == (35887, 10)
    assert int((~has_name).sum()) == 173  # the non-face rows FER+ left unnamed
    label, status, _ = relabel(counts)
    # The FER+ paper's majority rule leaves ~119 disgust images in Training.
    training = usage == "Training"
    assert int((label[training] == 1).sum()) == 119
    assert int((status == STATUS_NAMES.index("not_a_face")).sum()) >= 173


def test_usage_mismatch_is_reported_with_rows(raw_dir):
    import pandas as pd

    usage = pd.read_csv(raw_dir / "fer2013.csv", usecols=["Usage"])["Usage"].to_numpy(dtype=str)
    shifted = usage.copy()
    shifted[28709] = "Training"  # pretend the splits are off by one row
    with pytest.raises(DataError, match=r"'Usage' differs from fer2013.csv at rows \[28709\]"):
        read_ferplus(raw_dir / "fer2013new.csv", shifted)
    with pytest.raises(DataError, match=r"35887 rows, but fer2013.csv has 100"):
        read_ferplus(raw_dir / "fer2013new.csv", usage[:100])
