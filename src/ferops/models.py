"""The model zoo: Functional Keras models that take raw 48x48 grayscale pixels (0..255).

Each model carries its own preprocessing: augmentation layers (active only in training) and
rescaling to 0..1, so a saved ``.keras`` file is all a user needs to predict. The classifier
output is float32 softmax even under a mixed-precision policy.
"""

from __future__ import annotations

import functools
import json
import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from ferops.config import Section, check_choice
from ferops.errors import ParamsError

logger = logging.getLogger(__name__)


class Augmentation(Section):
    """In-graph augmentation settings, the ``train.augment`` params (0 or false switches one off).

    Attributes:
        flip: Random horizontal flips (faces are roughly symmetric; vertical flips are not used);
            ``alternate``: each image mirrored on alternate epochs instead, done by the training
            input pipeline (``ferops.input_pipeline.alternate_flips``), so the model has no flip layer.
        rotation: Max rotation as a fraction of a full turn (0.05 = 18 degrees).
        zoom: Max zoom in/out as a fraction of the image size.
        translation: Max shift as a fraction of the image size.
        contrast: Max contrast change factor.
        erasing: Probability of random erasing (a cut-out patch); 0 = off.
    """

    flip: bool | Literal["alternate"] = True
    rotation: float = Field(0.05, ge=0, lt=1)
    zoom: float = Field(0.1, ge=0, lt=1)
    translation: float = Field(0.1, ge=0, lt=1)
    contrast: float = Field(0.2, ge=0, lt=1)
    erasing: float = Field(0.0, ge=0, lt=1)

    @field_validator("flip", mode="before")
    @classmethod
    def _flip_choice(cls, value: Any) -> Any:
        # One message for the three choices, instead of pydantic's one per union member.
        if value is True or value is False or value == "alternate":
            return value
        raise ValueError("expected true, false or alternate")


class ModelConfig(Section):
    """The ``model`` params section.

    Attributes:
        arch: Architecture name, one of :data:`ARCHITECTURES`.
    """

    arch: str

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        return check_choice(value, sorted(ARCHITECTURES), "architecture")


def augmentation_layers(settings: Augmentation, seed: int) -> list[Any]:
    """Keras preprocessing layers for ``settings`` (they do nothing at inference time).

    The layers compute in float32 whatever the global dtype policy: interpolating 0..255 pixels
    in bfloat16 (8 significant bits) would blur them for no speed gain.
    """
    from keras import layers

    f32 = {"dtype": "float32"}
    stack: list[Any] = []
    if settings.flip is True:  # "alternate" flips in the input pipeline instead
        stack.append(layers.RandomFlip("horizontal", seed=seed, **f32))
    if settings.rotation:
        stack.append(layers.RandomRotation(settings.rotation, fill_mode="reflect", seed=seed + 1, **f32))
    if settings.zoom:
        stack.append(layers.RandomZoom(settings.zoom, fill_mode="reflect", seed=seed + 2, **f32))
    if settings.translation:
        stack.append(layers.RandomTranslation(settings.translation, settings.translation,
                                              fill_mode="reflect", seed=seed + 3, **f32))
    if settings.contrast:
        stack.append(layers.RandomContrast(settings.contrast, value_range=(0, 255), seed=seed + 4, **f32))
    if settings.erasing:
        stack.append(layers.RandomErasing(factor=settings.erasing, scale=(0.02, 0.2),
                                          value_range=(0, 255), seed=seed + 5, **f32))
    return stack


# oneDNN (TensorFlow's CPU kernels) corrupts the heap in the backward pass of a 1x1 convolution
# with a stride above 1 on fewer input channels than its 16-channel block: seen on an AMD EPYC
# (avx512_bf16, no AMX) as glibc's "corrupted double-linked list" abort after
# ``brgconv_strided:avx512_core`` backward_data of ``mb16_ic8oc16_ih48oh24kh1sh2`` (mini_xception's
# first shortcut), and as oneDNN issue #6035 (its "reduce to unit stride" workspace overrun when
# IC < ic_block). 16 channels, or stride 1, train fine.
ONEDNN_MIN_STRIDED_POINTWISE_CHANNELS = 16


def pointwise_conv(x: Any, filters: int, strides: int = 1, padding: str = "same", **kwargs: Any) -> Any:
    """A bias-free 1x1 ``Conv2D``, safe from oneDNN's strided 1x1 bug on narrow inputs.

    With ``strides`` > 1 and fewer than :data:`ONEDNN_MIN_STRIDED_POINTWISE_CHANNELS` input
    channels, the input is first subsampled by a 1x1 ``MaxPooling2D`` with that stride (it keeps
    every ``strides``-th pixel, exactly the pixels a strided 1x1 kernel reads) and the convolution
    runs at stride 1: the same arithmetic, without the crashing kernel. Both are stock Keras
    layers, so a saved ``.keras`` file still loads with plain Keras. Every 1x1 convolution of the
    zoo goes through here; :func:`build_model` refuses a net that bypasses it
    (:func:`unsafe_strided_pointwise_convolutions`).

    Args:
        x: Input tensor (NHWC).
        filters: Output channels.
        strides: Spatial stride.
        padding: ``same`` or ``valid`` (identical for a 1x1 kernel).
        **kwargs: Further ``Conv2D`` arguments (initializer, name, ...).

    Returns:
        The convolution's output tensor.
    """
    from keras import layers

    if strides != 1 and int(x.shape[-1]) < ONEDNN_MIN_STRIDED_POINTWISE_CHANNELS:
        x = layers.MaxPooling2D(pool_size=1, strides=strides, padding=padding)(x)
        strides = 1
    return layers.Conv2D(filters, 1, strides=strides, padding=padding, use_bias=False, **kwargs)(x)


def unsafe_strided_pointwise_convolutions(model: Any) -> list[str]:
    """The ``Conv2D`` layers of ``model`` that would run oneDNN's crashing strided 1x1 kernel.

    Those are 1x1 convolutions with a stride above 1 on fewer than
    :data:`ONEDNN_MIN_STRIDED_POINTWISE_CHANNELS` input channels (see :func:`pointwise_conv`).

    Returns:
        Descriptions (layer name, input channels, stride) of the offending layers; empty when safe.
    """
    from keras import layers

    found = []
    for layer in model.layers:
        if type(layer) is not layers.Conv2D or tuple(layer.kernel_size) != (1, 1):
            continue
        if tuple(layer.strides) == (1, 1):
            continue
        channels = int(layer.input.shape[-1])
        if channels < ONEDNN_MIN_STRIDED_POINTWISE_CHANNELS:
            found.append(f"{layer.name} (1x1, stride {tuple(layer.strides)}, {channels} input channels)")
    return found


def _conv_bn_relu(x: Any, filters: int, kernel: int = 3, strides: int = 1, *,
                  initializer: str = "glorot_uniform", momentum: float = 0.99,
                  activation: str = "relu") -> Any:
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      kernel_initializer=initializer)(x)
    x = layers.BatchNormalization(momentum=momentum)(x)
    return layers.ReLU()(x) if activation == "relu" else layers.Activation(activation)(x)


def mini_xception(x: Any) -> Any:
    """Mini-Xception (Arriaga et al. 2017): separable-conv residual modules, ~58k parameters."""
    from keras import layers

    x = _conv_bn_relu(x, 8)
    x = _conv_bn_relu(x, 8)
    for filters in (16, 32, 64, 128):
        residual = pointwise_conv(x, filters, strides=2)
        residual = layers.BatchNormalization()(residual)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.add([x, residual])
    return layers.GlobalAveragePooling2D()(x)


def _basic_block(x: Any, filters: int, strides: int) -> Any:
    from keras import layers

    shortcut = x
    y = _conv_bn_relu(x, filters, strides=strides)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = pointwise_conv(shortcut, filters, strides=strides, padding="valid")
        shortcut = layers.BatchNormalization()(shortcut)
    return layers.ReLU()(layers.add([y, shortcut]))


def resnet(x: Any) -> Any:
    """A small ResNet: 32-filter stem, three stages of two basic blocks (48/96/192), ~1.6M params."""
    from keras import layers

    x = _conv_bn_relu(x, 32)
    for stage, filters in enumerate((48, 96, 192)):
        x = _basic_block(x, filters, strides=1 if stage == 0 else 2)
        x = _basic_block(x, filters, strides=1)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dropout(0.3)(x)


def vgg(x: Any) -> Any:
    """VGG-style net after the published ~73 % FER2013 models: 4 stages of 2 conv+BN (64..512).

    About 5.9M parameters: the GPU recipe (~70 images/s on 2 CPU cores).
    """
    from keras import layers

    for filters in (64, 128, 256, 512):
        x = _conv_bn_relu(x, filters)
        x = _conv_bn_relu(x, filters)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    for units in (1024, 512):
        x = layers.Dense(units, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Dropout(0.5)(x)
    return x


def seed_cnn(x: Any) -> Any:
    """The classic FER2013 Keras-tutorial net: 5 Conv2D/BatchNorm/MaxPool/Dropout blocks, then Dense.

    Trained in the tutorials with Adam at 1e-4; kept so the baseline can be reproduced.
    """
    from keras import layers

    for filters, kernel in ((64, 3), (128, 5), (256, 3), (512, 3), (512, 3)):
        x = layers.Conv2D(filters, kernel, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
        x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    for units in (256, 512):
        x = layers.Dense(units)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Dropout(0.25)(x)
    return x


def space_to_depth(x: Any, block: int = 2) -> Any:
    """Rearrange ``block`` x ``block`` pixel patches into channels: (H, W, C) -> (H/b, W/b, b*b*C).

    Same result as ``tf.nn.space_to_depth``, built from stock Reshape/Permute layers so a saved
    ``.keras`` file loads without custom objects (a Lambda or custom layer would need this module).
    """
    from keras import layers

    height, width, channels = (int(side) for side in x.shape[1:])
    if height % block or width % block:
        raise ParamsError(f"base.image_size: space-to-depth needs a multiple of {block}, got "
                          f"{height}x{width}")
    x = layers.Reshape((height // block, block, width // block, block * channels))(x)
    x = layers.Permute((1, 3, 2, 4))(x)
    return layers.Reshape((height // block, width // block, block * block * channels))(x)


# Name of the fixed first layer of the ``resnet_s2d_whiten`` variant, set by fit_patch_whitening.
PATCH_WHITENING = "patch_whitening"


def patch_whitening_kernel(images: np.ndarray, patch: int = 3, epsilon: float = 5e-4,
                           chunk: int = 2000) -> np.ndarray:
    """A fixed conv kernel that whitens the ``patch`` x ``patch`` pixel patches of ``images``.

    The speed-training recipes' first layer (Page's DAWNBench ResNet, hlb-CIFAR10, airbench):
    the eigenvectors of the (uncentred) patch covariance, each scaled by 1/sqrt(eigenvalue +
    ``epsilon``), so the layer's outputs are decorrelated with unit variance over the training
    patches; followed by the same filters negated, so that a ReLU after it loses nothing.

    Args:
        images: uint8 training images, shape (n, height, width), 0..255.
        patch: Patch side.
        epsilon: Added to each eigenvalue, so near-constant directions are not blown up to noise.
        chunk: Images per step of the covariance sum (bounds the memory used).

    Returns:
        Kernel of shape (patch, patch, 1, 2 * patch**2) for pixels scaled to -1..1, as
        ``resnet_s2d`` sees them.
    """
    dimensions = patch * patch
    covariance, count = np.zeros((dimensions, dimensions)), 0
    for start in range(0, len(images), chunk):
        pixels = images[start:start + chunk].astype(np.float32) * (2.0 / 255.0) - 1.0
        windows = np.lib.stride_tricks.sliding_window_view(pixels, (patch, patch), axis=(1, 2))
        vectors = windows[:, ::2, ::2].reshape(-1, dimensions).astype(np.float64)
        covariance += vectors.T @ vectors
        count += len(vectors)
    if count == 0:
        raise ValueError("patch whitening needs at least one training image")
    eigenvalues, eigenvectors = np.linalg.eigh(covariance / count)
    filters = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + epsilon)
    kernel = np.concatenate([filters, -filters], axis=1)
    return kernel.reshape(patch, patch, 1, 2 * dimensions).astype(np.float32)


def fit_patch_whitening(model: Any, images: np.ndarray) -> bool:
    """Set ``model``'s patch-whitening layer (if it has one) from the training ``images``.

    Returns:
        Whether the model had such a layer.
    """
    try:
        layer = model.get_layer(PATCH_WHITENING)
    except ValueError:
        return False
    layer.set_weights([patch_whitening_kernel(images, patch=layer.kernel_size[0])])
    logger.info("patch whitening fitted on %d training images", len(images))
    return True


def resnet_s2d(x: Any, activation: str = "relu", whiten: bool = False) -> Any:
    """The CPU recipe: a space-to-depth ResNet sized for ~30 minutes of training on 2 CPU cores.

    The lossless space-to-depth stem turns 48x48x1 into 24x24x4, so no layer runs at full
    resolution; then a 32-filter conv stage at 24x24 and three stride-2 stages (64/128/256 filters
    at 12/6/3 pixels), each a conv plus one residual block of two convs. About 1.95M parameters.
    A residual block at 24x24 as well cost 20 % of the throughput; in a fixed time budget the extra
    epochs were worth more. He-normal initialisation and BatchNorm momentum 0.9 (its moving
    statistics must settle within a short run). ``activation`` is ReLU, or GELU in the
    ``resnet_s2d_gelu`` variant (measured in the README's ablation: slower, ReLU fuses into the
    convolution under oneDNN). ``whiten`` (the ``resnet_s2d_whiten`` variant) replaces the
    space-to-depth stem by a fixed patch-whitening layer: 3x3 patches at stride 2, 9 whitened
    directions and their negatives, ReLU (see :func:`patch_whitening_kernel`; the training stage
    sets it from the Training images, :func:`fit_patch_whitening`).
    """
    from keras import layers

    def conv(y: Any, filters: int, strides: int = 1) -> Any:
        return _conv_bn_relu(y, filters, strides=strides, initializer="he_normal", momentum=0.9,
                             activation=activation)

    # Centre the 0..1 pixels on zero so the zero padding of the convolutions means mid-grey.
    x = layers.Rescaling(2.0, offset=-1.0, dtype="float32")(x)
    if whiten:
        x = layers.Conv2D(18, 3, strides=2, padding="same", use_bias=False, trainable=False,
                          name=PATCH_WHITENING)(x)
        x = layers.ReLU()(x)
    else:
        x = space_to_depth(x)
    x = conv(x, 32)
    x = conv(x, 32)
    for filters in (64, 128, 256):
        x = conv(x, filters, strides=2)
        x = layers.add([x, conv(conv(x, filters), filters)])
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dropout(0.3)(x)


ARCHITECTURES: dict[str, Callable[[Any], Any]] = {
    "resnet_s2d": resnet_s2d,
    "resnet_s2d_gelu": functools.partial(resnet_s2d, activation="gelu"),
    "resnet_s2d_whiten": functools.partial(resnet_s2d, whiten=True),
    "mini_xception": mini_xception,
    "resnet": resnet,
    "vgg": vgg,
    "seed_cnn": seed_cnn,
}


def build_model(
    arch: str,
    n_classes: int = 7,
    image_size: int = 48,
    augmentation: Augmentation | None = None,
    seed: int = 0,
) -> Any:
    """Build a Functional Keras classifier from the zoo.

    Args:
        arch: One of :data:`ARCHITECTURES`.
        n_classes: Number of output classes.
        image_size: Side of the square grayscale input.
        augmentation: In-graph augmentation (None: no augmentation layers).
        seed: Seed for the augmentation layers.

    Returns:
        An uncompiled ``keras.Model`` taking float32 pixels in 0..255, shape (None, size, size, 1),
        and returning class probabilities.
    """
    if arch not in ARCHITECTURES:
        raise ParamsError(f"model.arch: unknown architecture {arch!r}; choose one of "
                          f"{', '.join(sorted(ARCHITECTURES))}")
    import keras
    from keras import layers

    inputs = keras.Input(shape=(image_size, image_size, 1), name="pixels")
    x = inputs
    for layer in augmentation_layers(augmentation, seed) if augmentation else []:
        x = layer(x)
    x = layers.Rescaling(1.0 / 255, name="rescale", dtype="float32")(x)
    features = ARCHITECTURES[arch](x)
    # float32 classifier and output keep the logits, softmax and loss numerically stable under
    # mixed precision (the 7-unit layer costs nothing).
    logits = layers.Dense(n_classes, name="logits", dtype="float32")(features)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    model = keras.Model(inputs, outputs, name=arch)
    unsafe = unsafe_strided_pointwise_convolutions(model)
    if unsafe:
        # Refused here rather than left to crash a user's training (or CI) on some CPUs.
        raise ParamsError(f"model.arch: {arch!r} has strided 1x1 convolutions on fewer than "
                          f"{ONEDNN_MIN_STRIDED_POINTWISE_CHANNELS} channels, which crash oneDNN's "
                          f"backward pass on some CPUs: {', '.join(unsafe)}; build them with "
                          f"ferops.models.pointwise_conv")
    logger.info("built %s: %s parameters", arch, f"{model.count_params():,}")
    return model


@functools.cache
def _fused_batch_normalization() -> type:
    """The BatchNormalization subclass of :func:`with_fused_batch_norm`.

    Defined on first use, so that importing this module imports neither Keras nor TensorFlow.
    """
    import keras
    import tensorflow as tf

    class FusedBatchNormalization(keras.layers.BatchNormalization):
        """Keras's BatchNormalization whose training-mode pass is TensorFlow's fused kernel.

        Keras 3 normalises a batch in separate element-wise ops (a cast to float32, the moments,
        the normalisation, a cast back), each a pass over the activations forward and again
        backward; TensorFlow's ``FusedBatchNormV3`` (oneDNN on CPU) does the statistics and the
        normalisation in one pass each way, on bfloat16 activations with float32 statistics.
        Same weights, same moving-statistics update (biased batch variance, as Keras); inference
        is Keras's own code.
        """

        def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
            rank = len(inputs.shape)
            if (not (training and self.trainable) or mask is not None or self.renorm
                    or self.synchronized or rank != 4 or self.axis % rank != rank - 1):
                return super().call(inputs, training=training, mask=mask)
            channels = inputs.shape[-1]
            scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
            offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, epsilon=self.epsilon, data_format="NHWC", is_training=True)
            # The kernel returns the Bessel-corrected variance; Keras averages the biased one.
            count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
            variance = variance * (count - 1.0) / count
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
            return tf.cast(outputs, self.compute_dtype)

    return FusedBatchNormalization


def with_fused_batch_norm(model: Any) -> Any:
    """A training twin of ``model`` whose BatchNormalization layers use TensorFlow's fused kernel.

    The twin has the same layers, names and weights (copied from ``model``); only the training
    pass of its BatchNormalization layers differs, and only in speed and rounding. Train the twin
    and copy its weights back (``model.set_weights(twin.get_weights())``) before saving ``model``:
    the saved file then holds stock Keras layers and loads without this module. Under another
    Keras backend than TensorFlow, ``model`` itself is returned.

    Args:
        model: A Functional model from :func:`build_model`.

    Returns:
        The twin, or ``model`` when the backend is not TensorFlow or it has no BatchNormalization.
    """
    import keras

    if keras.backend.backend() != "tensorflow" or not any(
            isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers):
        return model
    fused = _fused_batch_normalization()

    def clone(layer: Any) -> Any:
        kind = fused if type(layer) is keras.layers.BatchNormalization else type(layer)
        return kind.from_config(layer.get_config())

    twin = keras.models.clone_model(model, clone_function=clone)
    twin.set_weights(model.get_weights())
    return twin


# The member of a saved ``.keras`` archive that carries the class names. Keras reads only its own
# members (config.json, metadata.json, model.weights.h5, assets/) and ignores this one, so the
# file still loads with plain ``keras.saving.load_model`` and no ferops installed.
CLASS_NAMES_MEMBER = "ferops.json"


def save_class_names(path: Path, classes: Sequence[str]) -> None:
    """Record the class names inside a saved ``.keras`` file, so the model knows its labels.

    Args:
        path: A ``.keras`` archive written by Keras.
        classes: Class names, index i = output unit i.
    """
    with zipfile.ZipFile(path, "a") as archive:
        if CLASS_NAMES_MEMBER in archive.namelist():
            raise ParamsError(f"{path}: already carries class names")
        archive.writestr(CLASS_NAMES_MEMBER, json.dumps({"classes": list(classes)}))


def load_class_names(path: Path) -> tuple[str, ...] | None:
    """The class names a ``.keras`` file carries (None for files saved without them).

    Raises:
        ParamsError: The names are present but malformed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if CLASS_NAMES_MEMBER not in archive.namelist():
                return None
            document = json.loads(archive.read(CLASS_NAMES_MEMBER))
    except (zipfile.BadZipFile, OSError):
        return None
    classes = document.get("classes") if isinstance(document, dict) else None
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise ParamsError(f"{path}: {CLASS_NAMES_MEMBER} has no list of class names")
    return tuple(classes)
