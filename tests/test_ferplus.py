import numpy as np
import pytest

from ferops.errors import DataError
from ferops.ferplus import (
    FERPLUS_CLASSES,
    STATUS_NAMES,
    VOTE_COLUMNS,
    majority_winner,
    output_map,
    protocol_labels,
    read_ferplus,
    relabel,
)


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


def test_the_ferplus_benchmark_protocol_on_real_rows(raw_dir):
    import pandas as pd

    # Rows of fer2013new.csv picked by index; each expected label worked out by hand from its votes
    # with microsoft/FERPlus's majority mode: drop single votes, then a class needs strictly more
    # than half of the remaining votes; unknown, not-a-face and no-majority rows are left out.
    counts, _ = read_ferplus(raw_dir / "fer2013new.csv")
    labels = protocol_labels(counts)
    expected = {
        32298: "contempt",  # a lone vote for another class is dropped; contempt has most of the rest
        32311: "neutral",   # exactly half of all ten votes, but more than half once a single vote goes
        32300: None,        # a tie at exactly half: no majority
        32302: None,        # four classes share the votes: no majority
        32562: None,        # the majority is "unknown"
        32299: None,        # every vote says "not a face"
    }
    for row, name in expected.items():
        got = labels[row]
        assert (FERPLUS_CLASSES[got] if got >= 0 else None) == name, row
    # Without dropping single votes, row 32311 would have no majority: the rule matters.
    assert majority_winner(counts[32311:32312], drop_single_votes=False)[0] == -1
    usage = pd.read_csv(raw_dir / "fer2013.csv", usecols=["Usage"])["Usage"].to_numpy(dtype=str)
    private = usage == "PrivateTest"
    # The FER+ test set as published: 3,153 PrivateTest images, 16 of them contempt.
    assert int((labels[private] >= 0).sum()) == 3153
    assert int((labels[private] == FERPLUS_CLASSES.index("contempt")).sum()) == 16


def test_model_outputs_map_onto_the_ferplus_classes():
    fer2013 = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert [FERPLUS_CLASSES[i] for i in output_map(fer2013)] == [
        "anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
    assert output_map(list(FERPLUS_CLASSES)).tolist() == list(range(8))
    with pytest.raises(DataError, match=r"base.classes: \['bored'\] have no FER\+ class"):
        output_map(["happy", "bored"])

