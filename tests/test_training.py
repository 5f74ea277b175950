import numpy as np
import pytest

from ferops.config import build
from ferops.errors import ParamsError
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
from ferops.targets import subsample
from ferops.training import TrainConfig, train


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
