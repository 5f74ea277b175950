import numpy as np
import pytest

from ferops.config import build
from ferops.errors import DataError, ParamsError
from ferops.io import load_arrays
from ferops.models import (
    ARCHITECTURES,
    Augmentation,
    ModelConfig,
    build_model,
    fit_patch_whitening,
    patch_whitening_kernel,
    space_to_depth,
    with_fused_batch_norm,
)
from ferops.training import (
    TrainConfig,
    alternate_flips,
    labelled_only,
    make_dataset,
    make_optimizer,
    match_prior,
    one_cycle_rate,
    subsample,
    targets_for,
    train,
)


@pytest.mark.parametrize(("change", "message"), [
    ({"optimizer": "rmsprop"}, "train.optimizer: Input should be 'adam', 'adamw' or 'sgd'; got 'rmsprop'"),
    ({"lr": -0.001}, "train.lr: Input should be greater than 0; got -0.001"),
    ({"batch_size": 0}, "train.batch_size: Input should be greater than 0; got 0"),
    ({"epochs": 2.5}, "train.epochs: Input should be a valid integer"),
    ({"schedule": "step"}, "train.schedule: Input should be 'cosine', 'onecycle', 'plateau' or 'constant'"),
    ({"decay_norm_and_bias": "no way"}, "train.decay_norm_and_bias: Input should be a valid boolean"),
    ({"warmup_fraction": 1.0}, "train.warmup_fraction: Input should be less than 1"),
    ({"learning_rate": 0.1}, "train.learning_rate: unknown key; known keys here: augment, batch_size, "),
    ({"augment": {"rotation": 2}}, "train.augment.rotation: Input should be less than 1; got 2"),
    ({"augment": {"flipp": True}}, "train.augment.flipp: unknown key; known keys here: contrast, erasing, "),
    ({"augment": {"flip": "sometimes"}},
     "train.augment.flip: expected true, false or alternate; got 'sometimes'"),
    ({"target": "mix"}, "train.target: Input should be 'hard', 'soft' or 'blend'; got 'mix'"),
    ({"blend_alpha": 1.5}, "train.blend_alpha: Input should be less than or equal to 1; got 1.5"),
    ({"ema_momentum": 1}, "train.ema_momentum: Input should be less than 1; got 1"),
    ({"mixup": -0.2}, "train.mixup: Input should be greater than or equal to 0; got -0.2"),
    ({"max_train_images": 10}, r"train: max_train_images \(10\) must be null or at least batch_size \(128\)"),
])
def test_bad_params_fail_before_training(change, message):
    with pytest.raises(ParamsError, match=message):
        build(TrainConfig, change, "train")


def test_yaml_scalars_are_read_as_numbers_and_configs_are_frozen():
    # PyYAML reads 1e-4 (no dot) as a string; `dvc exp run -S train.lr=1e-4` writes just that.
    config = build(TrainConfig, {"lr": "1e-4", "epochs": 3}, "train")
    assert config.lr == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="frozen"):
        config.lr = 0.1


@pytest.mark.parametrize("epochs", [1, 2, 18, 100])
def test_any_epoch_count_has_a_valid_warm_up(epochs):
    # The warm-up is a share of the schedule: `dvc exp run -S train.epochs=1` just works.
    config = build(TrainConfig, {"epochs": epochs, "warmup_fraction": 0.15, "schedule": "onecycle"}, "train")
    steps = config.warmup_steps(steps_per_epoch=229)
    assert 0 < steps < epochs * 229
    assert steps == round(0.15 * epochs * 229)


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(ParamsError, match="model.arch: architecture 'alexnet' is not one of: mini_xception, "
                                          "resnet, resnet_s2d, resnet_s2d_gelu, resnet_s2d_whiten, seed_cnn, "
                                          "vgg"):
        build(ModelConfig, {"arch": "alexnet"}, "model")
    with pytest.raises(ParamsError, match="unknown architecture 'alexnet'"):
        build_model("alexnet")


def test_subsample_is_stratified_and_seeded():
    arrays = {"label": np.repeat(np.arange(4), [100, 10, 50, 40]), "classes": np.array(["a"] * 4)}
    first, second = subsample(arrays, 50, seed=3), subsample(arrays, 50, seed=3)
    np.testing.assert_array_equal(first["label"], second["label"])
    counts = np.bincount(first["label"], minlength=4)
    assert counts.sum() == 50
    assert np.abs(counts - np.array([25, 2.5, 12.5, 10])).max() <= 1  # class shares kept
    assert first["classes"].tolist() == ["a"] * 4  # non-per-image arrays pass through


def test_one_cycle_warms_up_linearly_then_decays_to_zero():
    rates = [one_cycle_rate(step, total_steps=100, warmup_steps=20, peak=0.1) for step in range(101)]
    assert rates[0] == pytest.approx(0.004)  # 4 % of the peak
    assert rates[10] == pytest.approx(0.004 + 0.096 / 2)
    assert max(rates) == pytest.approx(0.1) and int(np.argmax(rates)) == 20
    assert rates[60] == pytest.approx(0.05)
    assert rates[99] == pytest.approx(0.1 / 80) and rates[100] == 0  # the last step of 100
    assert np.all(np.diff(rates[20:]) < 0)
    assert one_cycle_rate(0, total_steps=10, warmup_steps=0, peak=0.1) == pytest.approx(0.1)


def test_space_to_depth_matches_tensorflow():
    import keras
    import tensorflow as tf

    images = np.random.default_rng(0).random((2, 6, 4, 3)).astype(np.float32)
    inputs = keras.Input((6, 4, 3))
    model = keras.Model(inputs, space_to_depth(inputs))
    np.testing.assert_array_equal(model.predict(images, verbose=0),
                                  tf.nn.space_to_depth(images, 2).numpy())
    with pytest.raises(ParamsError, match="needs a multiple of 2, got 5x4"):
        space_to_depth(keras.Input((5, 4, 1)))


@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_weight_decay_can_spare_batchnorm_and_biases(decay_norm_and_bias):
    import keras

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Dense(2)(inputs)))
    config = TrainConfig(optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.5, schedule="constant",
                         warmup_fraction=0, decay_norm_and_bias=decay_norm_and_bias)
    optimizer = make_optimizer(config, steps_per_epoch=1)
    for variable in model.trainable_variables:
        variable.assign(np.ones(variable.shape, dtype=np.float32))
    # A zero gradient leaves only the decay: each decayed weight goes from 1 to 1 - lr * 0.5.
    optimizer.apply_gradients([(np.zeros(v.shape, np.float32), v) for v in model.trainable_variables])
    after = {v.path.split("/")[-1]: float(np.asarray(v).ravel()[0]) for v in model.trainable_variables}
    assert after["kernel"] == pytest.approx(0.5)
    for name in ("bias", "gamma", "beta"):
        assert after[name] == pytest.approx(0.5 if decay_norm_and_bias else 1.0), name


@pytest.fixture(scope="module")
def faces(prepared_dir):
    return load_arrays(prepared_dir / "public_test.npz")


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_each_architecture_overfits_a_small_real_batch(arch, faces):
    import keras

    keras.utils.set_random_seed(0)
    images = faces["images"][:16, ..., None].astype(np.float32)
    targets = np.eye(7, dtype=np.float32)[faces["label"][:16]]
    model = build_model(arch, augmentation=None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    # Training-mode loss: BatchNorm's moving statistics barely move in 40 steps, so an
    # inference-mode evaluation would not show what the weights have learnt.
    losses = model.fit(images, targets, batch_size=16, epochs=40, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0], f"{arch}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_the_fused_batch_norm_twin_trains_like_the_stock_model(faces):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = build_model("resnet_s2d", augmentation=None)
    twin = with_fused_batch_norm(model)
    norms = [layer for layer in twin.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is not keras.layers.BatchNormalization for layer in norms)
    assert [layer.name for layer in twin.layers] == [layer.name for layer in model.layers]
    for net in (model, twin):  # random dropout masks would differ between the two passes
        for layer in net.layers:
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
    images = tf.constant(faces["images"][:32, ..., None].astype(np.float32))
    targets = tf.constant(np.eye(7, dtype=np.float32)[faces["label"][:32]])

    def training_pass(net):
        with tf.GradientTape() as tape:
            loss = keras.losses.categorical_crossentropy(targets, net(images, training=True))
            loss = tf.reduce_mean(loss)
        return loss, tape.gradient(loss, net.trainable_variables)

    stock_loss, stock_gradients = training_pass(model)
    fused_loss, fused_gradients = training_pass(twin)
    np.testing.assert_allclose(fused_loss, stock_loss, rtol=1e-4)
    # Per weight, the gradients agree to float32 rounding, amplified a little where a channel's
    # batch variance is tiny; a wrong formula (a missing term, the unbiased variance) is off by far more.
    pairs = zip(model.trainable_variables, stock_gradients, fused_gradients, strict=True)
    for variable, stock, fused in pairs:
        error = float(tf.norm(fused - stock) / tf.norm(stock))
        assert error < 0.01, f"{variable.path}: gradients differ by {error:.2%}"
    # The same moving statistics after the one training pass (Keras averages the biased variance).
    for stock, fused in zip(model.non_trainable_weights, twin.non_trainable_weights, strict=True):
        np.testing.assert_allclose(fused.numpy(), stock.numpy(), rtol=1e-4, atol=1e-6)
    # Inference is Keras's own code: the weights copied back give the stock model the same outputs.
    model.set_weights(twin.get_weights())
    np.testing.assert_allclose(twin.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


def test_models_take_raw_pixels_and_output_probabilities(faces):
    model = build_model("mini_xception", augmentation=Augmentation(erasing=0.2))
    probabilities = model.predict(faces["images"][:5, ..., None].astype(np.float32), verbose=0)
    assert probabilities.shape == (5, 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def _short_run(prepared_dir, tmp_path, seed, images=512):
    # onecycle over 8 steps of 64: the rate of the last step is 0.01 * (1 - 7/8).
    config = TrainConfig(epochs=1, batch_size=64, lr=0.01, schedule="onecycle", warmup_fraction=0,
                         max_train_images=images)
    return train(config, load_arrays(prepared_dir / "train.npz"),
                 load_arrays(prepared_dir / "public_test.npz"), arch="mini_xception", seed=seed,
                 n_classes=7, image_size=48,
                 checkpoint=tmp_path / f"best-{seed}.keras")


@pytest.mark.slow
def test_same_seed_gives_the_same_first_epoch_loss(prepared_dir, tmp_path):
    first = _short_run(prepared_dir, tmp_path, seed=7)
    second = _short_run(prepared_dir, tmp_path, seed=7)
    other = _short_run(prepared_dir, tmp_path, seed=8)
    assert first.history["loss"][0] == pytest.approx(second.history["loss"][0], abs=1e-4)
    assert first.history["loss"][0] != pytest.approx(other.history["loss"][0], abs=1e-4)
    assert first.history["lr"][0] == pytest.approx(0.01 / 8)  # the onecycle callback set each step
    assert first.cpu_seconds > 0
    # train() trains the fused-BatchNorm twin but saves the stock model: plain Keras loads it.
    import keras

    saved = keras.saving.load_model(tmp_path / "best-7.keras")
    norms = [layer for layer in saved.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is keras.layers.BatchNormalization for layer in norms)


@pytest.mark.slow
def test_separable_net_trains_a_full_epoch_on_the_full_training_split(prepared_dir, tmp_path):
    # Regression guard: TF 2.21 + oneDNN crashed on a ragged last batch with mini_xception-like
    # separable-conv nets (STACK-NOTES); the input pipeline drops the remainder. 27,794 images do
    # not divide by 128. mini_xception is the net that crashed, and 3x cheaper than the default.
    train_arrays = load_arrays(prepared_dir / "train.npz")
    assert len(train_arrays["label"]) % 128 != 0
    config = TrainConfig(epochs=1, batch_size=128, warmup_fraction=0)
    result = train(config, train_arrays, load_arrays(prepared_dir / "public_test.npz"), arch="mini_xception",
                   seed=42, n_classes=7, image_size=48, checkpoint=tmp_path / "best.keras")
    assert result.epochs_run == 1
    assert np.isfinite(result.history["loss"][0])
    # It learnt something in one pass (chance is 1/7; validation accuracy after a single epoch
    # is still at the mercy of BatchNorm's moving statistics, so it is not asserted).
    assert result.history["accuracy"][0] > 0.2
    assert (tmp_path / "best.keras").is_file()


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


@pytest.mark.slow
def test_ferplus_mode_validates_on_the_public_test_rows_that_have_a_majority(fer_and_votes, tmp_path,
                                                                              caplog):
    # prepare.labels=ferplus with clean_test=false keeps PublicTest rows without a FER+ majority
    # (label -1); training used to stop on them.
    from ferops.inference import load_keras_model
    from ferops.prepare import prepare_fer2013

    fer, votes, has_name = fer_and_votes
    splits = prepare_fer2013(fer, votes, has_name, classes=["angry", "disgust", "fear", "happy", "sad",
                                                           "surprise", "neutral"], labels="ferplus").splits
    public = splits["PublicTest"]
    unlabelled = int((public["label"] < 0).sum())
    assert unlabelled > 0
    config = TrainConfig(epochs=1, batch_size=64, lr=0.01, warmup_fraction=0, max_train_images=1024)
    with caplog.at_level("WARNING", logger="ferops.training"):
        result = train(config, splits["Training"], public, arch="mini_xception", seed=1, n_classes=7,
                       image_size=48, checkpoint=tmp_path / "best.keras")
    assert f"validation data: {unlabelled} of {len(public['label'])} images have no label" in caplog.text
    labelled = public["label"] >= 0
    model = load_keras_model(tmp_path / "best.keras")
    predicted = model.predict(public["images"][labelled][..., None], verbose=0).argmax(axis=1)
    accuracy = (predicted == public["label"][labelled]).mean()
    assert accuracy == pytest.approx(result.best_val_accuracy, abs=2e-3)


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


@pytest.mark.slow
def test_ema_weights_are_validated_and_checkpointed(prepared_dir, tmp_path):
    import keras

    train_arrays = load_arrays(prepared_dir / "train.npz")
    val_arrays = subsample(load_arrays(prepared_dir / "public_test.npz"), 512, seed=0)

    def run(ema_momentum, name):
        config = TrainConfig(epochs=1, batch_size=64, lr=0.05, optimizer="sgd", schedule="constant",
                             warmup_fraction=0, max_train_images=384, ema_momentum=ema_momentum)
        return train(config, train_arrays, val_arrays, arch="mini_xception", seed=3, n_classes=7,
                     image_size=48, checkpoint=tmp_path / f"{name}.keras")

    plain, averaged = run(None, "plain"), run(0.6, "ema")
    # The average does not change the raw trajectory, only what is validated and saved: the plain
    # checkpoint holds the last raw weights, the EMA one their average over the steps.
    assert averaged.history["loss"][0] == pytest.approx(plain.history["loss"][0], abs=1e-4)
    saved = keras.saving.load_model(tmp_path / "ema.keras")
    raw = keras.saving.load_model(tmp_path / "plain.keras")
    differences = [np.abs(np.asarray(a) - np.asarray(b)).max()
                   for a, b in zip(saved.trainable_variables, raw.trainable_variables, strict=True)]
    assert max(differences) > 1e-4
    images = val_arrays["images"][..., None].astype(np.float32)
    accuracy = (saved.predict(images, verbose=0).argmax(axis=1) == val_arrays["label"]).mean()
    assert accuracy == pytest.approx(averaged.history["val_accuracy"][0], abs=1e-6)


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


def test_patch_whitening_decorrelates_the_patches_of_unseen_faces(prepared_dir, faces):
    kernel = patch_whitening_kernel(load_arrays(prepared_dir / "train.npz")["images"][:4000])
    assert kernel.shape == (3, 3, 1, 18)
    filters = kernel.reshape(9, 18)
    np.testing.assert_array_equal(filters[:, 9:], -filters[:, :9])
    # PublicTest faces, never seen by the fit: their 3x3 patches come out decorrelated, each
    # direction with about unit variance (epsilon shrinks the faintest one somewhat).
    pixels = faces["images"][:1000].astype(np.float32) * (2 / 255) - 1
    windows = np.lib.stride_tricks.sliding_window_view(pixels, (3, 3), axis=(1, 2))[:, ::2, ::2]
    whitened = windows.reshape(-1, 9) @ filters[:, :9]
    covariance = whitened.T @ whitened / len(whitened)
    assert np.diag(covariance) == pytest.approx(np.ones(9), abs=0.25)
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 0.05
    # Raw patches are far from white: neighbouring pixels correlate strongly.
    raw = windows.reshape(-1, 9)
    assert np.corrcoef(raw[:, 0], raw[:, 1])[0, 1] > 0.8


@pytest.mark.slow
def test_train_fits_the_whitening_layer_keeps_it_fixed_and_saves_it(prepared_dir, tmp_path):
    import keras

    train_arrays = subsample(load_arrays(prepared_dir / "train.npz"), 256, seed=0)
    val_arrays = subsample(load_arrays(prepared_dir / "public_test.npz"), 256, seed=0)
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, optimizer="sgd", schedule="constant",
                         warmup_fraction=0)
    result = train(config, train_arrays, val_arrays, arch="resnet_s2d_whiten", seed=3, n_classes=7,
                   image_size=48, checkpoint=tmp_path / "white.keras")
    assert np.isfinite(result.history["loss"][0])
    saved = keras.saving.load_model(tmp_path / "white.keras").get_layer("patch_whitening")
    assert not saved.trainable
    np.testing.assert_allclose(saved.get_weights()[0], patch_whitening_kernel(train_arrays["images"]),
                               rtol=1e-5, atol=1e-6)
    assert not fit_patch_whitening(build_model("resnet_s2d"), train_arrays["images"])
