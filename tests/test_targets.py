import numpy as np
import pytest

from ferops.errors import DataError
from ferops.io import load_arrays
from ferops.targets import labelled_only, match_prior, subsample, targets_for


def test_subsample_is_stratified_and_seeded():
    arrays = {"label": np.repeat(np.arange(4), [100, 10, 50, 40]), "classes": np.array(["a"] * 4)}
    first, second = subsample(arrays, 50, seed=3), subsample(arrays, 50, seed=3)
    np.testing.assert_array_equal(first["label"], second["label"])
    counts = np.bincount(first["label"], minlength=4)
    assert counts.sum() == 50
    assert np.abs(counts - np.array([25, 2.5, 12.5, 10])).max() <= 1  # class shares kept
    assert first["classes"].tolist() == ["a"] * 4  # non-per-image arrays pass through


def test_blend_target_mixes_fer_plus_votes_with_the_original_label():
    arrays = {"label": np.array([0, 3, 6]),
              "soft_label": np.array([[0, 0, 0, 0.5, 0, 0, 0.5],   # FER+ says happy/neutral
                                      [0, 0, 0, 1.0, 0, 0, 0],     # FER+ agrees
                                      [0, 0, 0, 0, 0, 0, 0]], np.float32)}  # no FER+ votes
    blended = targets_for(arrays, "blend", 7, "training data", blend_alpha=0.4)
    np.testing.assert_allclose(blended[0], [0.6, 0, 0, 0.2, 0, 0, 0.2], atol=1e-6)
    np.testing.assert_allclose(blended[1], np.eye(7)[3], atol=1e-6)
    np.testing.assert_allclose(blended[2], np.eye(7)[6], atol=1e-6)  # falls back to the label
    np.testing.assert_allclose(blended.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(targets_for(arrays, "blend", 7, "x", blend_alpha=0.0),
                                  targets_for(arrays, "hard", 7, "x"))
    with pytest.raises(DataError, match="training data: no FER\\+ vote distributions"):
        targets_for({"label": arrays["label"]}, "blend", 7, "training data")


def test_blend_target_on_real_prepared_rows(prepared_dir):
    train_arrays = load_arrays(prepared_dir / "train.npz")
    hard = targets_for(train_arrays, "hard", 7, "training data")
    blended = targets_for(train_arrays, "blend", 7, "training data", blend_alpha=0.5)
    np.testing.assert_allclose(blended.sum(axis=1), 1, atol=1e-5)
    # Where FER+ disagrees with the original label, the label keeps at least half the mass.
    assert (blended[np.arange(len(hard)), train_arrays["label"]] >= 0.5 - 1e-6).all()
    assert (np.abs(blended - hard).sum(axis=1) > 0.1).mean() > 0.2


def test_match_prior_moves_class_totals_to_the_label_counts_and_keeps_each_images_ranking():
    rng = np.random.default_rng(0)
    votes = rng.dirichlet([0.3, 0.3, 3.0], size=400).astype(np.float32)  # most mass on class 2
    counts = np.array([150.0, 150.0, 100.0])
    fitted = match_prior(votes, counts)
    np.testing.assert_allclose(fitted.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(fitted.sum(axis=0), counts, rtol=0.01)
    # Column scalings and row normalisations: the odds of one class against another are scaled
    # by the same factor in every image, so the images keep their order by those odds.
    np.testing.assert_array_equal(np.argsort(fitted[:, 0] / fitted[:, 2]),
                                  np.argsort(votes[:, 0] / votes[:, 2]))
    # A class nobody voted for stays empty instead of dividing by zero.
    empty = match_prior(np.array([[0.5, 0.5, 0], [1, 0, 0]], np.float32), np.array([1.0, 0.5, 0.5]))
    assert np.isfinite(empty).all() and (empty[:, 2] == 0).all()


def test_blend_with_matched_prior_on_real_prepared_rows(prepared_dir):
    train_arrays = load_arrays(prepared_dir / "train.npz")
    voted = train_arrays["soft_label"].sum(axis=1) > 0
    label_share = np.bincount(train_arrays["label"][voted], minlength=7) / voted.sum()
    raw = targets_for(train_arrays, "blend", 7, "training data", blend_alpha=1.0)[voted].mean(axis=0)
    matched = targets_for(train_arrays, "blend", 7, "training data", blend_alpha=1.0,
                          blend_match_prior=True)[voted].mean(axis=0)
    neutral = 6
    # The raw FER+ votes lean towards neutral; matched, the class shares come close to the
    # labels', as far as the votes allow (FER+ taggers gave fear votes to few images, and an
    # image holds at most its whole unit of mass, so fear cannot reach its label share).
    assert raw[neutral] > label_share[neutral] + 0.1
    assert abs(matched[neutral] - label_share[neutral]) < 0.05
    assert np.abs(matched - label_share).sum() < 0.5 * np.abs(raw - label_share).sum()
    blended = targets_for(train_arrays, "blend", 7, "training data", blend_alpha=0.5,
                          blend_match_prior=True)
    np.testing.assert_allclose(blended.sum(axis=1), 1, atol=1e-5)


def test_validation_skips_images_without_a_label():
    arrays = {"images": np.zeros((4, 2, 2), np.uint8), "label": np.array([0, -1, 3, -1]),
              "classes": np.array(["a", "b"])}
    kept = labelled_only(arrays, "validation data")
    np.testing.assert_array_equal(kept["label"], [0, 3])
    assert kept["images"].shape == (2, 2, 2) and list(kept["classes"]) == ["a", "b"]
    with pytest.raises(DataError, match="validation data: none of the 2 images has a label"):
        labelled_only({"label": np.array([-1, -1])}, "validation data")
