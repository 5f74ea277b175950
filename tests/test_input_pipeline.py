import numpy as np
import pytest

from ferops.input_pipeline import alternate_flips, make_dataset


@pytest.mark.parametrize("backend_pipeline", ["tensorflow", "arrays"])
def test_mixup_mixes_each_image_with_its_mirror_partner_in_the_batch(backend_pipeline, monkeypatch):
    import keras

    images = np.stack([np.full((48, 48), value, np.uint8) for value in range(0, 160, 10)])
    targets = np.eye(16, dtype=np.float32)
    if backend_pipeline == "arrays":
        monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    dataset = make_dataset(images, targets, 16, training=True, seed=1, mixup=0.4)
    x, y = next(iter(dataset)) if backend_pipeline == "tensorflow" else dataset[0]
    x, y = np.asarray(x), np.asarray(y)
    # Every image is a convex mix of two constant images; its target holds the same two weights.
    for row in range(16):
        nonzero = np.flatnonzero(y[row] > 1e-6)
        assert 1 <= len(nonzero) <= 2
        assert y[row].sum() == pytest.approx(1, abs=1e-5)
        assert x[row].mean() == pytest.approx(float(y[row] @ (np.arange(16) * 10)), abs=0.05)
    assert (y.max(axis=1) < 0.99).mean() > 0.5  # Beta(0.4, 0.4) mixes most images noticeably
    plain = make_dataset(images, targets, 16, training=False, seed=1, mixup=0.4)
    x, y = next(iter(plain)) if backend_pipeline == "tensorflow" else plain[0]
    assert np.asarray(y).max(axis=1).min() == 1  # never at validation


def test_tensorflow_pipeline_runs_without_the_autotuner_and_keeps_every_image_once():
    # The autotuner's sleeping thread stalls every iterator teardown (benchmarks/train_stall.py).
    images = np.arange(40, dtype=np.uint8)[:, None, None] + np.zeros((1, 48, 48), np.uint8)
    targets = np.eye(40, dtype=np.float32)
    for training in (True, False):
        dataset = make_dataset(images, targets, 8, training=training, seed=3)
        assert dataset.options().autotune.enabled is False
        seen = np.concatenate([np.asarray(x)[:, 0, 0, 0] for x, _ in dataset])
        assert sorted(seen.tolist()) == list(range(40))
        assert (seen == np.arange(40)).all() != training  # shuffled for training only


def _lopsided_faces(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose left half is brighter (so a mirrored one shows), each its own class."""
    images = np.zeros((count, 48, 48), np.uint8)
    images[:, :, :24] = 200
    images += np.arange(count, dtype=np.uint8)[:, None, None]
    return images, np.eye(count, dtype=np.float32)


def _seen(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, whether each was mirrored) of one batch of :func:`_lopsided_faces`."""
    x = np.asarray(x)
    return np.asarray(y).argmax(axis=1), x[:, 0, 0, 0] < x[:, 0, 47, 0]


def _epoch_seen(seen: list[tuple[np.ndarray, np.ndarray]], count: int) -> tuple[np.ndarray, np.ndarray]:
    """(image ids in order, which of the ``count`` images were mirrored) over one epoch's batches."""
    ids, mirrored = (np.concatenate(parts) for parts in zip(*seen, strict=True))
    flips = np.zeros(count, bool)
    flips[ids] = mirrored
    return ids, flips


@pytest.mark.parametrize("backend_pipeline", ["tensorflow", "arrays"])
def test_alternating_flip_mirrors_each_image_on_every_other_epoch(backend_pipeline, monkeypatch):
    import keras

    images, targets = _lopsided_faces(20)
    if backend_pipeline == "arrays":
        monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    dataset = make_dataset(images, targets, 5, training=True, seed=1, alternate_flip_epochs=3)
    if backend_pipeline == "tensorflow":
        batches = list(dataset)
        epochs = [batches[4 * epoch:4 * epoch + 4] for epoch in range(3)]
        assert len(batches) == 12
    else:
        epochs = []
        for _ in range(3):
            epochs.append([dataset[index] for index in range(len(dataset))])
            dataset.on_epoch_end()
    orders = []
    for epoch, batches in enumerate(epochs):
        ids, flips = _epoch_seen([_seen(*batch) for batch in batches], 20)
        assert sorted(ids.tolist()) == list(range(20))  # every image once per epoch
        np.testing.assert_array_equal(flips, alternate_flips(20, 1, epoch))
        orders.append(ids.tolist())
    assert orders[0] != orders[1]  # reshuffled each epoch
    first = alternate_flips(20, 1, 0)
    assert 5 <= first.sum() <= 15  # a random half, not all one way
    np.testing.assert_array_equal(alternate_flips(20, 1, 1), ~first)


def test_keras_runs_the_alternating_flip_epochs_in_order():
    # train() hands Keras one dataset holding every epoch and steps_per_epoch: Keras must keep
    # one iterator across epochs (a new one per epoch would replay the first epoch's flips).
    import keras

    images, targets = _lopsided_faces(20)
    seen: list[np.ndarray] = []

    class Recorder(keras.Model):
        def call(self, x):
            return x

        def train_step(self, data):
            seen.append(_seen(*data))
            return {"rows": float(len(seen[-1][0]))}

    model = Recorder()
    model.compile(run_eagerly=True)
    dataset = make_dataset(images, targets, 5, training=True, seed=4, alternate_flip_epochs=3)
    model.fit(dataset, epochs=3, steps_per_epoch=4, shuffle=False, verbose=0)
    assert len(seen) == 12
    for epoch in range(3):
        _, flips = _epoch_seen(seen[4 * epoch:4 * epoch + 4], 20)
        np.testing.assert_array_equal(flips, alternate_flips(20, 4, epoch))
