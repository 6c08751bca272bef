"""Guided Backpropagation and Guided Grad-CAM: pixel-level gradients.

Guided backpropagation (Springenberg et al., ICLR 2015 workshop) changes the
backward pass of every ReLU: a gradient passes only where the ReLU's input
was positive (the ordinary ReLU gradient) *and* the gradient arriving from
above is positive. Here the change exists only inside the explainer's
compiled function: while it is traced, each ReLU of the model (``ReLU``
layers, ``Activation("relu")`` and ``activation="relu"``/``"relu6"`` fused
into a layer) is routed through a custom gradient that does this
(``backend.guided``: ``tf.custom_gradient``, ``jax.custom_vjp`` or a
``torch.autograd.Function``), for the explaining thread only, and the layers
are restored when the pass ends (``keras_cam/_patch.py``), so the user's
model keeps its ordinary gradients. A ReLU applied as a plain function
inside a subclassed model's ``call`` cannot be reached and keeps its
ordinary gradient.
"""

from __future__ import annotations

import contextlib

import numpy as np

from keras_cam import backend as _backend
from keras_cam import layers as _layers
from keras_cam._compat import ops
from keras_cam._patch import intercepted, replaced_call
from keras_cam.base import Explainer, minmax, upsample
from keras_cam.methods.gradient import GradCAM

_RELUS = ("relu", "relu6")


def _guided(fn):
    """``fn`` (an element-wise ReLU) with a guided backward pass:
    ``dx = fn'(x) * ReLU(dy)``."""

    def guided_fn(x, *args, **kwargs):
        return _backend.guided(lambda t: fn(t, *args, **kwargs), x)
    return guided_fn


@contextlib.contextmanager
def guided_relus(model):
    """Give every reachable ReLU of ``model`` a guided gradient inside the block."""
    with contextlib.ExitStack() as stack:
        for _, layer in _layers.walk(model):
            if type(layer).__name__ == "ReLU":
                stack.enter_context(replaced_call(layer, lambda inner, x, *a, **k: _guided(inner)(x, *a, **k)))
            elif getattr(getattr(layer, "activation", None), "__name__", None) in _RELUS:
                stack.enter_context(intercepted(layer, "activation", _guided))
        yield


def guided_gradients(explainer, images, class_idx, target_fn=None):
    """``(dS/dx with guided ReLUs (N, H, W, C), explainer.target_scores(...))``
    (zeros where the score does not depend on the input)."""
    def forward(tap, x):
        with guided_relus(explainer.model):
            _, outputs = explainer.graph.forward(x)
        scored = explainer.target_scores(outputs, class_idx, target_fn)
        return scored[0], scored

    _, scored, _, _, (grads,) = _backend.tapped_gradients(forward, (images,))
    return grads, scored


def gradient_image(gradients, contrast=0.15):
    """Input gradients as images that can be shown, in [0, 1].

    Each image's gradients are standardized (zero mean, unit standard
    deviation over all its pixels and channels), multiplied by ``contrast``
    and centred on mid-grey: ``clip(0.5 + contrast * (g - mean) / std, 0, 1)``.
    Zero gradients give a uniform grey image.

    Args:
        gradients: ``(N, H, W, C)`` or one ``(H, W, C)``, e.g. from
            :class:`GuidedBackprop` or :class:`GuidedGradCAM`.
        contrast: how far one standard deviation reaches from grey.

    Returns:
        float32 numpy array of the same shape.
    """
    g = np.asarray(gradients, dtype=np.float32)
    if g.ndim not in (3, 4):
        raise ValueError(f"`gradients` must be (N, H, W, C) or (H, W, C); received shape {g.shape}.")
    axes = tuple(range(g.ndim - 3, g.ndim))
    centred = g - g.mean(axis=axes, keepdims=True)
    std = centred.std(axis=axes, keepdims=True)
    scaled = np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)
    return np.clip(0.5 + contrast * scaled, 0.0, 1.0).astype(np.float32)


class GuidedBackprop(Explainer):
    """Guided Backpropagation: ``dS/dx`` with guided ReLU gradients.

    Returns ``(N, H, W, C)`` input gradients (``(H, W, C)`` for one image;
    channels last whatever the model's data format), signed and unscaled;
    :func:`gradient_image` turns them into images.
    Guided gradients are a fine-grained picture of the edges the network
    responds to, but they hardly depend on the class or on the deeper weights
    (Adebayo et al. 2018; see :func:`keras_cam.sanity_check`).

    Args:
        model: a Keras model; never modified (its ReLUs are guided only while
            the explainer's function is traced).
        output: for multi-output models, the output holding the class scores.
        linearize: differentiate the logit before a final softmax/sigmoid.
        batch_size: images per compiled call.
        image_input: see :class:`keras_cam.Explainer`.
        data_format: see :class:`keras_cam.Explainer`.
        reshape: accepted for a uniform call; with no target layer it changes nothing.

    Example:
        >>> grads = keras_cam.GuidedBackprop(model)(images)      # (N, H, W, C)
        >>> plt.imshow(keras_cam.gradient_image(grads)[0])
    """

    def __init__(self, model, *, output=None, linearize=True, batch_size=32, image_input=None, data_format=None,
                 reshape=None):
        super().__init__(model, None, output=output, linearize=linearize, batch_size=batch_size,
                         image_input=image_input, data_format=data_format, reshape=reshape)

    uses_layer = False

    def _layer_specs(self, layer):
        return []  # the gradient is taken at the input

    def __call__(self, images, targets=None):
        """``(N, H, W, C)`` guided gradients for ``images`` (``targets`` as for any explainer)."""
        return self.explain(images, targets).maps

    def explain(self, images, targets=None):
        return super().explain(images, targets, upsample=False, normalize=False)

    def compute(self, images, class_idx, upsample_, normalize_, target_fn=None):
        grads, (scores, idx, probs) = guided_gradients(self, images, class_idx, target_fn)
        return grads, scores, idx, probs


class GuidedGradCAM(GradCAM):
    """Guided Grad-CAM (Selvaraju et al. 2017): guided gradients times Grad-CAM.

    ``G_guided(x) * M(x)[..., None]``, where ``M`` is the Grad-CAM map of the
    same class, upsampled bilinearly to the input size and min-max scaled to
    [0, 1]. Returns ``(N, H, W, C)``, like :class:`GuidedBackprop`; the Grad-CAM
    part uses ordinary gradients.

    Args:
        model: a Keras model; never modified.
        layer: the Grad-CAM target layer (see :class:`keras_cam.Explainer`).
        output: for multi-output models, the output holding the class scores.
        linearize: differentiate the logit before a final softmax/sigmoid.
        batch_size: images per compiled call.
        eigen_smooth: smooth the Grad-CAM part (see :class:`keras_cam.Explainer`).
        image_input: see :class:`keras_cam.Explainer`.
        data_format: see :class:`keras_cam.Explainer`.
        reshape: see :class:`keras_cam.Explainer` (the Grad-CAM part's token layer).

    Example:
        >>> grads = keras_cam.GuidedGradCAM(model)(images)      # (N, H, W, C)
        >>> plt.imshow(keras_cam.gradient_image(grads)[0])
    """

    def __init__(self, model, layer=None, *, output=None, linearize=True, batch_size=32, eigen_smooth=False,
                 image_input=None, data_format=None, reshape=None):
        super().__init__(model, layer, output=output, linearize=linearize, batch_size=batch_size,
                         eigen_smooth=eigen_smooth, image_input=image_input, data_format=data_format,
                         reshape=reshape)

    def __call__(self, images, targets=None):
        """``(N, H, W, C)`` Guided Grad-CAM for ``images``."""
        return self.explain(images, targets).maps

    def explain(self, images, targets=None):
        return super().explain(images, targets, upsample=True, normalize=False)

    def compute(self, images, class_idx, upsample_, normalize_, target_fn=None):
        cam, (scores, idx, probs) = self.raw_maps(images, class_idx, target_fn)
        cam = minmax(upsample(ops.cast(cam, "float32"), tuple(images.shape[1:-1])))
        grads, _ = guided_gradients(self, images, idx, target_fn)
        return grads * cam[..., None], scores, idx, probs
