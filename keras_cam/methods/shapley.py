"""ShapleyCAM: channel weights from the gradient and a Hessian-vector product.

Cai (2025), "CAMs as Shapley value-based explainers". Each activation value
``A_ij^k`` is a player of a game whose utility is the explained score ``S``;
a second-order Taylor expansion of ``S`` around the activation gives each
player's Shapley value in closed form, ``phi = A (g - 1/2 H A)`` with
``g = dS/dA`` and ``H`` the Hessian of ``S`` in ``A``. Grad-CAM's first-order
weights are the case ``H = 0``.
"""

from __future__ import annotations

from keras_cam import backend as _backend
from keras_cam import layout as _layout
from keras_cam._compat import ops
from keras_cam.base import Explainer


class ShapleyCAM(Explainer):
    """ShapleyCAM (Cai, 2025): Grad-CAM with a second-order correction.

    With ``g = dS/dA`` and ``H A`` the Hessian of ``S`` in the activation
    ``A`` times ``A`` itself (one extra backward pass):
    ``w_k = mean_ij (g - 1/2 H A)^k_ij``; map ``= ReLU(sum_k w_k A^k)``.

    Where ``S`` is linear in ``A`` (a layer that feeds global average
    pooling and one ``Dense`` layer, scored on the logit) ``H = 0`` and the map
    is Grad-CAM's. The paper pairs the method with the ReST score
    (:class:`keras_cam.targets.ReST`, ``y_c + log softmax(y)_c``), which is not
    linear in the logits, so the correction takes effect:
    ``cam(images, targets=ReST())``.

    The product ``H A`` is exact (:func:`keras_cam.backend.tapped_hvp`); the
    backward passes stop at the target layer. One exception: Keras 3 on
    TensorFlow normalizes with ``tf.nn.moments``, whose variance stops the
    gradient of the mean, so the curvature of a ``LayerNormalization`` (or a
    training-mode batch normalization) after the target layer is missed there
    (JAX, PyTorch and legacy tf-keras are exact; inference-mode
    ``BatchNormalization`` is linear and unaffected). ``eigen_smooth`` takes
    the principal component of ``w_k A^k``.

    It takes the arguments of :class:`keras_cam.Explainer` (``model``, ``layer``
    and its options).

    Example:
        >>> from keras_cam.targets import ReST
        >>> maps = keras_cam.ShapleyCAM(model)(images, targets=ReST())   # top class, ReST score
        >>> maps = keras_cam.ShapleyCAM(model)(images, targets=[3, 7])   # the logits of classes 3, 7
    """

    _weights_channels = True

    def raw_maps(self, images, class_idx, target_fn=None):
        a, g, hv, scored = self.activations_gradients_and_hvp(images, class_idx, target_fn)
        w = self.channel_weights(a, g, hv)
        return self.reduce_channels(_layout.weigh_channels(a, w)), scored

    def activations_gradients_and_hvp(self, images, class_idx, target_fn=None):
        """``(A, G, HA, target_scores)``: the target layer's feature map, ``dS/dA`` and
        ``H A``, float32 ``(N, *s, K)``, and the explained scores."""
        found = {}

        def forward(tap):
            _, found["layouts"], outputs = self.graph.capture(images, tap)
            scored = self.target_scores(outputs, class_idx, target_fn)
            return scored[0], scored

        _, scored, raw, grads, hvps = _backend.tapped_hvp(forward)
        lay = found["layouts"][0]
        if grads.get(0) is None:
            raise ValueError(
                f"The explained score does not depend on layer {self.graph.paths[0]!r} (no "
                f"gradient flows from it). Choose a layer that feeds the output."
                + self.graph.output_spec.implicit_note()
            )
        a, g, hv = (ops.cast(lay.view(t), "float32") for t in (raw[0], grads[0], hvps[0]))
        return a, g, hv, scored

    @staticmethod
    def channel_weights(a, g, hv):
        """``(N, K)``: ``mean_ij (g - 1/2 H A)`` over the positions of ``(N, *s, K)``."""
        return ops.mean(g - 0.5 * hv, axis=_layout.spatial_axes(g))
