"""``VizGradCAM``: the one-call Grad-CAM helper, on keras-cam's machinery.

A drop-in for the well-known ``VizGradCAM(model, image, interpolant,
plot_results)`` function: same arguments, same outputs. It finds the last
convolution, explains the top-1 class with Grad-CAM and either draws
``image * interpolant + heatmap * (1 - interpolant)`` on the current
matplotlib axes or returns the coloured heatmap.

Where it differs from the original, on purpose: the gradient is taken of the
top class's logit, not of its softmax probability (:mod:`keras_cam.graph`);
the last convolution is found inside nested models too (a
``keras.applications`` base used as a layer); a batch of one image is
accepted; and matplotlib's global ``rcParams`` are left alone.
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from keras_cam import _compat
from keras_cam import layers as _layers
from keras_cam import targets as _targets
from keras_cam.base import as_batch, minmax, upsample
from keras_cam.methods.gradient import GradCAM
from keras_cam.viz import colorize, overlay

_CONVOLUTIONS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose")


def _is_convolution(layer):
    classes = tuple(
        getattr(m.layers, name) for m in _compat._packages() for name in _CONVOLUTIONS
        if hasattr(m.layers, name)
    )
    return isinstance(layer, classes)


def last_conv_layer(model, sample):
    """Path of the last 2-D convolution that runs on ``sample``, nested models included.

    Convolutions whose output is a single pixel are passed over when a larger
    one exists (as for the automatic layer choice).
    """
    convs = [i for i in _layers.trace_layers(model, sample) if _is_convolution(i.layer) and i.is_spatial]
    if not convs:
        raise ValueError(
            f"Model {model.name!r} has no 2-D convolution for VizGradCAM to explain. Use "
            f"keras_cam.GradCAM(model, layer=...) with the layer you want."
        )
    larger = [i for i in convs if i.spatial_size > 1]
    return (larger or convs)[-1].path


def _display_image(image):
    """The original helper's display scaling: min-max of the image to 0..255."""
    x = np.asarray(image, dtype=np.float64)
    lo, hi = x.min(), x.max()
    scaled = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return np.rint(scaled * 255.0).astype(np.uint8)


def VizGradCAM(model, img, interpolant=0.5, plot_results=True, *, layer=None):  # noqa: N802 (the original's name)
    """Grad-CAM of the top class at the last convolution, drawn or returned.

    Args:
        model: a Keras classifier (flat, or with a nested base such as
            ``keras.applications.EfficientNetB0``); never modified.
        img: one image ``(H, W, C)`` or a batch of one ``(1, H, W, C)``, as the
            model takes it.
        interpolant: the image's weight in the drawn blend, in [0, 1]
            (``image * interpolant + heatmap * (1 - interpolant)``).
        plot_results: True draws the blend on matplotlib's current axes (shown
            inline in a notebook; call ``plt.show()`` in a script) and returns
            None; False returns the heatmap instead.
        layer: the layer to explain (a name, a nested path or a layer); None
            takes the last 2-D convolution of any kind (see
            ``docs/vizgradcam.md`` for how that differs from the original
            helper, and how to pass its choice here).

    Returns:
        None when plotting; otherwise the heatmap coloured with OpenCV's jet
        colormap, ``(H, W, 3)`` uint8 RGB at the image's size.

    Each call finds the layer and runs the model eagerly, once; for many
    images, build ``keras_cam.GradCAM(model, layer=...)`` once (it compiles)
    and call it on each.

    Example:
        >>> heatmap = keras_cam.VizGradCAM(model, image, plot_results=False)
    """
    if isinstance(interpolant, bool) or not isinstance(interpolant, numbers.Real) or not 0 <= interpolant <= 1:
        raise ValueError(f"`interpolant` is the image's weight, a number in [0, 1]; received {interpolant!r}.")
    if not _compat.is_model(model):
        raise TypeError(f"`model` must be a Keras model; received {type(model).__name__}.")
    batch, _ = as_batch(img)
    if batch.shape[0] != 1:
        raise ValueError(
            f"VizGradCAM explains one image; received a batch of {batch.shape[0]}. Call it per "
            f"image, or use keras_cam.GradCAM(model)(images) for a batch."
        )
    # One image, once: the method's own computation, run eagerly. Compiling it
    # (what an explainer does so that its later calls are fast) would cost
    # more than this single run.
    cam = GradCAM(model, layer=last_conv_layer(model, batch) if layer is None else layer)
    maps, (_, idx, prob) = cam.raw_maps(batch, tf.constant([_targets.TOP1], tf.int32))
    heatmap = minmax(upsample(tf.cast(maps, tf.float32), tf.shape(batch)[1:3]))[0].numpy()
    if not plot_results:
        return colorize(heatmap, "jet")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (pyplot only when drawing)

    picture = overlay(_display_image(batch[0]), heatmap, alpha=1.0 - float(interpolant), colormap="jet")
    ax = plt.gca()
    ax.imshow(picture)
    ax.set_title(f"Grad-CAM: class {int(idx[0])} (p={float(prob[0]):.2f})")
    return None
