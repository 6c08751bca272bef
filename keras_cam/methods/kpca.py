"""KPCA-CAM: the first kernel principal component of the target layer's activations.

Karmani et al. (2024), "KPCA-CAM: Visual explainability of deep computer
vision models using kernel PCA". Eigen-CAM's principal component, with the
positions compared through an RBF kernel instead of a dot product, so the
component can follow a non-linear structure of the channel vectors.
"""

from __future__ import annotations

import numbers

import numpy as np

from keras_cam import backend as _backend
from keras_cam import layout as _layout
from keras_cam._compat import ops
from keras_cam.base import Explainer


def kernel_principal_component(x, gamma=None):
    """Each position's projection on the first kernel principal component (RBF kernel).

    Per image, the ``P`` positions of ``x`` ``(N, *s, K)`` are the samples and
    the ``K`` channels the features. With ``k_ij = exp(-gamma |x_i - x_j|^2)``
    and ``K_c = (I - 1/P) k (I - 1/P)`` the centred kernel matrix, whose top
    eigenpair is ``(lambda, u)`` (``|u| = 1``), the projections are
    ``sqrt(lambda) u`` (scikit-learn's ``KernelPCA(kernel="rbf").fit_transform``).
    The sign is arbitrary; it is chosen so that the projection correlates
    positively with the centred channel sum ``sum_k x_k`` (as
    :func:`keras_cam.base.principal_component`).

    Args:
        x: ``(N, *s, K)`` feature maps.
        gamma: the kernel's inverse width; None is ``1 / K``.

    Returns:
        ``(N, *s)`` float32 projections (zero-mean per image).
    """
    flat = ops.cast(_layout.flatten_spatial(x), _backend.wide_float())
    gamma = 1.0 / int(x.shape[-1]) if gamma is None else float(gamma)
    sq = ops.sum(flat * flat, axis=-1)
    gram = ops.matmul(flat, ops.transpose(flat, (0, 2, 1)))
    d2 = ops.maximum(sq[:, :, None] + sq[:, None, :] - 2.0 * gram, 0.0)
    k = ops.exp(-gamma * d2)
    k = k - ops.mean(k, axis=1, keepdims=True)
    k = k - ops.mean(k, axis=2, keepdims=True)  # (I - 1/P) k (I - 1/P)
    k = 0.5 * (k + ops.transpose(k, (0, 2, 1)))  # exactly symmetric for eigh
    values, vectors = ops.eigh(k)
    proj = vectors[..., -1] * ops.sqrt(ops.maximum(values[:, -1:], 0.0))
    total = ops.sum(flat - ops.mean(flat, axis=1, keepdims=True), axis=-1)
    sign = ops.where(ops.sum(proj * total, axis=1, keepdims=True) < 0, -1.0, 1.0)
    return ops.reshape(ops.cast(proj * ops.cast(sign, proj.dtype), "float32"),
                       (-1,) + tuple(int(d) for d in x.shape[1:-1]))


class KPCACAM(Explainer):
    """KPCA-CAM (Karmani et al., 2024): no gradients, no class.

    The map is ``ReLU`` of the first kernel principal component of the target
    layer's activations (:func:`kernel_principal_component`): per image, the
    positions' channel vectors ``A_ij`` are compared by the RBF kernel
    ``exp(-gamma |A_ij - A_ab|^2)``, the kernel matrix is centred, and each
    position's projection on its top eigenvector is ``sqrt(lambda_1) u_1``;
    its sign makes it correlate positively with the channel sum, as
    :class:`keras_cam.EigenCAM`'s. The map is the same whatever the target
    class (the explanation still reports the scores of ``targets``).

    The kernel matrix has ``P^2`` entries for ``P`` positions per image: cheap
    at a last convolutional layer (7x7, 14x14), heavy at a 56x56 one.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        gamma: the RBF kernel's inverse width, a positive number; None (the
            default, scikit-learn's) is ``1 / K`` for ``K`` channels.
        **kwargs: the options of :class:`keras_cam.Explainer`.

    Example:
        >>> maps = keras_cam.KPCACAM(model)(images)             # (N, H, W) in [0, 1]
        >>> maps = keras_cam.KPCACAM(model, gamma=1e-3)(images)
    """

    def __init__(self, model, layer=None, *, gamma=None, **kwargs):
        if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, numbers.Real)
                                  or not np.isfinite(gamma) or gamma <= 0):
            raise ValueError(
                f"`gamma` must be a positive finite number (the RBF kernel's inverse width) or None "
                f"(1 / channels); received {gamma!r}."
            )
        self.gamma = None if gamma is None else float(gamma)
        super().__init__(model, layer, **kwargs)

    def raw_maps(self, images, class_idx, target_fn=None):
        acts, outputs = self.graph.forward(images)
        scored = self.target_scores(outputs, class_idx, target_fn)
        return ops.relu(kernel_principal_component(ops.cast(acts[0], "float32"), self.gamma)), scored
