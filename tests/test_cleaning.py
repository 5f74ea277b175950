import numpy as np

from ferops.cleaning import (
    blank_mask,
    conflicting_duplicates_mask,
    exact_twins_mask,
    find_duplicates,
    first_in_group,
    near_twins_mask,
    perceptual_hashes,
    pixel_std,
)


def images_from(ids, size=4):
    """Images whose pixels are determined by an id: equal ids -> identical images."""
    rng = np.random.default_rng(0)
    bank = rng.integers(0, 256, size=(max(ids) + 1, size, size), dtype=np.uint8)
    return bank[ids]


def test_find_duplicates_groups_identical_images():
    dup = find_duplicates(images_from([0, 1, 0, 2, 1, 0]))
    assert dup.size.tolist() == [3, 2, 3, 1, 2, 3]
    assert dup.group[0] == dup.group[2] == dup.group[5] != dup.group[1]
    assert dup.summary() == {"duplicate_groups": 2, "rows_in_duplicate_groups": 5,
                             "redundant_rows": 3}


def test_conflicting_labels_flag_every_copy_and_ignore_unlabelled():
    dup = find_duplicates(images_from([0, 0, 1, 1, 2, 3, 3]))
    label = np.array([3, 4, 5, 5, 1, 2, -1])
    assert conflicting_duplicates_mask(dup, label).tolist() == [True, True, False, False, False,
                                                                False, False]


def test_exact_twins_between_training_and_test():
    dup = find_duplicates(images_from([0, 1, 2, 0, 3, 2, 2]))
    training = np.array([True, True, True, False, False, False, False])
    flagged = exact_twins_mask(dup, training, ~training)
    assert flagged.tolist() == [True, False, True, True, False, True, True]


def test_first_in_group_names_the_earliest_copy_among_members():
    dup = find_duplicates(images_from([2, 0, 1, 0, 2, 0, 3]))
    assert first_in_group(dup).tolist() == [0, 1, 2, 1, 0, 1, 6]
    member = np.array([False, False, True, True, True, False, False])
    # Row 0's group has row 4 as its first member; rows 1 and 5 find row 3; row 6 has none.
    assert first_in_group(dup, member).tolist() == [4, 3, 2, 3, 4, 3, -1]


def test_pixel_std_is_what_the_blank_rule_thresholds():
    images = np.zeros((2, 8, 8), dtype=np.uint8)
    images[1, 0, 0] = 5
    std = pixel_std(images)
    assert std.dtype == np.float32
    assert std.tolist() == [0.0, np.float32(np.std(images[1].astype(np.float32)))]
    assert blank_mask(images, float(std[1])).tolist() == [True, False]


def test_blank_mask_threshold():
    images = np.zeros((3, 8, 8), dtype=np.uint8)
    images[1, 0, 0] = 5           # almost constant: std ~0.6
    images[2] = np.arange(64).reshape(8, 8)
    assert blank_mask(images, 1.0).tolist() == [True, True, False]
    assert blank_mask(images, 0.1).tolist() == [True, False, False]


def test_perceptual_near_duplicates_on_real_faces(raw_dir):
    import pandas as pd

    from ferops.fer2013 import parse_pixels

    faces = parse_pixels(pd.read_csv(raw_dir / "fer2013.csv", nrows=6)["pixels"])
    # A brightened copy is not an exact twin but is a perceptual near-duplicate.
    brighter = np.clip(faces[0].astype(int) + 12, 0, 255).astype(np.uint8)
    images = np.concatenate([faces, brighter[None]])
    training = np.array([True] * 6 + [False])
    hashes = perceptual_hashes(images)
    assert not exact_twins_mask(find_duplicates(images), training, ~training).any()
    flagged = near_twins_mask(hashes, training, ~training, max_distance=4)
    assert flagged.tolist() == [True, False, False, False, False, False, True]


def test_quality_rules_flag_a_row_when_any_rule_does():
    from ferops.cleaning import QUALITY_RULES, flagged_by_quality_rules

    flags = {rule: np.zeros(len(QUALITY_RULES) + 1, bool) for rule in QUALITY_RULES}
    for row, rule in enumerate(QUALITY_RULES):
        flags[rule][row] = True
    flags["ferplus_unlabelled"] = np.ones(len(QUALITY_RULES) + 1, bool)  # not a quality rule
    assert flagged_by_quality_rules(flags).tolist() == [True] * len(QUALITY_RULES) + [False]
