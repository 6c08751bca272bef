"""Methods that weight the target layer's activations with gradients.

Notation (per image): ``A`` is the activation ``(h, w, K)`` of the target
layer, ``S`` the explained score (the pre-softmax logit of the target class
by default) and ``G = dS/dA`` its gradient. Each method is a weight per
channel ``w_k(A, G)``; the map is ``ReLU(sum_k w_k A^k)``.
"""

from __future__ import annotations

import tensorflow as tf

from keras_cam.base import Explainer


class GradientExplainer(Explainer):
    """Base of gradient methods: runs the model under a tape, then combines A and G."""

    def raw_maps(self, images, class_idx, target_fn=None):
        with tf.GradientTape() as tape:
            acts, outputs = self.graph.forward(images, tape)
            scored = self.target_scores(outputs, class_idx, target_fn)
        grads = tape.gradient(scored[0], acts)
        if grads[0] is None:
            raise ValueError(
                f"The explained score does not depend on layer {self.layer_path!r} (no "
                f"gradient flows from it). Choose a layer that feeds the output."
            )
        a = tf.cast(acts[0], tf.float32)
        g = tf.cast(grads[0], tf.float32)
        return self.combine(a, g), scored

    def combine(self, a, g):
        """``ReLU(sum_k w_k A^k)`` with the method's channel weights."""
        w = self.channel_weights(a, g)
        return tf.nn.relu(tf.einsum("nhwk,nk->nhw", a, w))

    @staticmethod
    def channel_weights(a, g):
        """``(N, K)`` weights from activations and gradients ``(N, h, w, K)``."""
        raise NotImplementedError


class GradCAM(GradientExplainer):
    """Grad-CAM (Selvaraju et al., ICCV 2017).

    ``w_k = mean_ij dS/dA^k_ij``; map ``= ReLU(sum_k w_k A^k)``.

    Example:
        >>> cam = keras_cam.GradCAM(model)            # last spatial layer
        >>> maps = cam(images)                         # (N, H, W) in [0, 1]
        >>> maps = cam(images, targets=[3, 7])         # one class per image
    """

    @staticmethod
    def channel_weights(a, g):
        return tf.reduce_mean(g, axis=(1, 2))


class GradCAMPlusPlus(GradientExplainer):
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018, eq. 19 with an exponential score).

    With ``g = dS/dA``:
    ``alpha_ij^k = g^2 / (2 g^2 + sum_ab A^k_ab g^3)`` (0 where the denominator is 0),
    ``w_k = sum_ij alpha_ij^k ReLU(g_ij^k)``; map ``= ReLU(sum_k w_k A^k)``.
    """

    @staticmethod
    def channel_weights(a, g):
        g2 = tf.square(g)
        g3 = g2 * g
        denom = 2.0 * g2 + tf.reduce_sum(a, axis=(1, 2), keepdims=True) * g3
        alpha = tf.math.divide_no_nan(g2, denom)
        return tf.reduce_sum(alpha * tf.nn.relu(g), axis=(1, 2))
