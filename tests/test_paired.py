"""Paired comparisons: hand-checkable cases of the difference, its interval and McNemar's test."""

from __future__ import annotations

import numpy as np
import pytest

from ferops.errors import DataError
from ferops.paired import (
    PairedDifference,
    bootstrap_mean_difference,
    fingerprint,
    group_difference,
    paired_difference,
    per_image_arrays,
)


def test_identical_models_differ_by_nothing():
    correct = np.array([True, False] * 50)
    result = paired_difference(correct, correct)
    assert (result.difference, result.low, result.high) == (0.0, 0.0, 0.0)
    assert (result.only_new, result.only_old, result.p_value) == (0, 0, 1.0)
    assert result.units == "images" and result.n == result.n_units == 100


def test_discordant_counts_and_the_exact_mcnemar_test_by_hand():
    old = np.zeros(100, bool)
    new = old.copy()
    new[:10] = True  # the new model gets 10 more images right, and none fewer
    result = paired_difference(new, old, resamples=2000)
    assert result.difference == pytest.approx(10.0)
    assert (result.only_new, result.only_old) == (10, 0)
    assert result.p_value == pytest.approx(2 * 0.5 ** 10)  # two-sided binomial, 10 of 10
    assert 0 < result.low < 10 < result.high < 20
    assert not result.worse_beyond(0.0)
    # Swapped, the same comparison seen from the other side.
    swapped = paired_difference(old, new, resamples=2000)
    assert swapped.difference == pytest.approx(-10.0) and swapped.worse_beyond(0.0)
    assert not swapped.worse_beyond(swapped.low * -1 + 0.01)  # within the allowed drop


def test_people_not_images_are_the_unit_when_faces_of_one_person_move_together():
    # 10 people with 20 faces each; the new model is better on 3 people's faces only.
    subjects = np.repeat([f"p{i}" for i in range(10)], 20)
    old = np.zeros(200, bool)
    new = np.isin(subjects, ["p0", "p1", "p2"])
    by_images = paired_difference(new, old, resamples=4000)
    by_people = paired_difference(new, old, subjects, resamples=4000)
    assert by_people.units == "subjects" and by_people.n_units == 10
    assert by_people.difference == by_images.difference == pytest.approx(30.0)
    assert (by_people.high - by_people.low) > 2 * (by_images.high - by_images.low)


def test_the_bootstrap_is_seeded_and_checks_its_arguments():
    difference = np.random.default_rng(1).integers(-1, 2, 300).astype(float)
    assert bootstrap_mean_difference(difference, None, 500, 0.9) == bootstrap_mean_difference(
        difference, None, 500, 0.9)
    low90, high90 = bootstrap_mean_difference(difference, None, 3000, 0.9)
    low99, high99 = bootstrap_mean_difference(difference, None, 3000, 0.99)
    assert low99 < low90 < difference.mean() < high90 < high99
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_mean_difference(difference, None, 0, 0.95)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_difference(difference, None, 10, 1.5)


def test_unpaired_inputs_are_refused():
    with pytest.raises(DataError, match="same non-empty images"):
        paired_difference(np.ones(5, bool), np.ones(6, bool))
    with pytest.raises(DataError, match="3 subject ids for 5 images"):
        paired_difference(np.ones(5, bool), np.ones(5, bool), np.array(["a", "b", "c"]))


def test_group_difference_averages_each_recipes_runs_per_image():
    runs_new = [np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)]
    runs_old = [np.array([0, 0, 0, 0], bool), np.array([1, 0, 0, 0], bool)]
    difference, low, high = group_difference(runs_new, runs_old, resamples=500)
    # Shares 1, .5, .5, 0 against .5, 0, 0, 0: a mean difference of 0.375.
    assert difference == pytest.approx(37.5)
    assert low <= difference <= high


def test_per_image_arrays_and_fingerprints_follow_the_images_and_their_order():
    images = np.arange(4 * 48 * 48, dtype=np.uint8).reshape(4, 48, 48)
    label = np.array([0, 1, 2, 3])
    subjects = np.array(["a", "a", "b", "b"])
    arrays = per_image_arrays({"jaffe": (images, label, np.array([0, 1, 0, 0]), subjects),
                               "private_test": (images, label, label, None)})
    assert arrays["jaffe.correct"].tolist() == [True, True, False, False]
    assert arrays["jaffe.subject"].tolist() == ["a", "a", "b", "b"]
    assert "private_test.subject" not in arrays and arrays["private_test.correct"].all()
    assert str(arrays["jaffe.fingerprint"]) == fingerprint(images, label)
    assert fingerprint(images[::-1], label[::-1]) != fingerprint(images, label)


def test_worse_beyond_needs_the_whole_interval_below_the_allowed_drop():
    def result(low, high):
        return PairedDifference((low + high) / 2, low, high, 0.95, 213, "subjects", 10, 0, 0, 1.0)

    assert result(-7.5, -0.2).worse_beyond(0.0)
    assert not result(-7.5, -0.2).worse_beyond(3.0)
    assert not result(-7.5, +0.5).worse_beyond(0.0)
    assert result(-9.0, -3.5).worse_beyond(3.0)
    assert result(-9.0, -3.5).interval == "[-9.00, -3.50]"
