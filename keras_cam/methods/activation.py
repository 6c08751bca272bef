"""Methods that read the target layer's activations without differentiating.

Notation (per image): ``A`` is the activation ``(h, w, K)`` of the target
layer and ``c`` the explained class.
"""

from __future__ import annotations

import numpy as np

from keras_cam import _compat
from keras_cam import layers as _layers
from keras_cam import layout as _layout
from keras_cam._compat import ops
from keras_cam.base import Explainer, principal_component
from keras_cam.methods.streaming import check_seed

# Layers that are the identity when the model predicts (training=False).
_INERT = (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
    "GaussianNoise", "AlphaDropout", "ActivityRegularization", "Identity",
)
_OUTPUT_ACTIVATIONS = ("Activation", "Softmax")
_GAP = ("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D")


class CAM(Explainer):
    """Class Activation Mapping (Zhou et al., CVPR 2016), without gradients.

    For a model whose target layer feeds ``GlobalAveragePooling2D`` (1D, 3D) and then
    one ``Dense`` layer with kernel ``W`` ``(K, classes)``, the logit of class
    ``c`` is ``mean_ij sum_k W[k, c] A^k_ij + b_c``, and the map is
    ``ReLU(sum_k W[k, c] A^k)``. The ``ReLU`` keeps the evidence for the class,
    as in Grad-CAM; since Grad-CAM's weights on this model are ``W[k, c] / (h w)``,
    the two maps are equal up to that positive scale.

    A fully convolutional classifier, whose target layer has one channel per
    class followed by ``GlobalAveragePooling2D`` (and at most a final
    activation), is covered too: the map of class ``c`` is ``ReLU(A^c)``.

    Between these layers only layers that are the identity at inference
    (``Dropout`` and the like) may sit, and after the ``Dense`` only the final
    softmax/sigmoid. Any other model raises a ``ValueError``: use
    :class:`keras_cam.GradCAM`, which needs no particular head.

    Targets are classes (None, ints); a callable target has no class weights.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        **kwargs: the options of :class:`keras_cam.Explainer`.

    Raises:
        ValueError: when the model's head after ``layer`` is not one CAM is
            defined for (the message says what follows the layer).

    Example:
        >>> maps = keras_cam.CAM(model)(images)                 # GAP + Dense classifiers
        >>> maps = keras_cam.CAM(model)(images, targets=2)      # the map of class 2
    """

    _weights_channels = True

    def __init__(self, model, layer=None, **kwargs):
        self._dense = self._channels = None
        super().__init__(model, layer, **kwargs)
        sample = _layers.probe_sample(self.model)
        if sample is not None:
            self.prepare(sample)

    def prepare(self, sample):
        super().prepare(sample)
        if self._channels is None:
            self._find_head(sample)

    def _find_head(self, sample):
        """Check the model's shape after the target layer; remember the Dense."""
        infos = [i for i in _layers.trace_layers(self.model, sample) if not _compat.is_model(i.layer)]
        where = [n for n, i in enumerate(infos) if i.layer is self.layer]
        after = [i for i in (infos[where[-1] + 1:] if where else []) if type(i.layer).__name__ not in _INERT]
        kinds = [type(i.layer).__name__ for i in after]
        shape = infos[where[-1]].output_shape if where else None
        channels = (shape[1] if self.graph.layer_is_channels_first(self.layer) else shape[-1]) if shape else None
        if kinds[:1] and kinds[0] in _GAP and channels is not None:
            rest = kinds[1:]
            if rest[:1] == ["Dense"] and all(k in _OUTPUT_ACTIVATIONS for k in rest[1:]):
                if int(after[1].layer.kernel.shape[0]) == channels:
                    self._dense, self._channels = after[1].layer, int(channels)
                    return
            elif all(k in _OUTPUT_ACTIVATIONS for k in rest) and self._one_channel_per_class(channels):
                self._channels = int(channels)
                return
        found = " -> ".join(kinds[:4]) or "nothing"
        raise ValueError(
            f"CAM needs the target layer {self.layer_path!r} to feed GlobalAveragePooling2D and "
            f"then one Dense layer (or to have one channel per class, then GlobalAveragePooling2D); "
            f"after it this model runs: {found}. Use keras_cam.GradCAM, which works for any head "
            f"(and equals CAM up to scale where CAM applies)."
        )

    def _one_channel_per_class(self, channels):
        classes = self.graph.num_classes
        single_sigmoid = channels == 1 and self.graph.output_activation == "sigmoid"
        return classes is None or channels == classes or single_sigmoid

    def class_weights(self):
        """``(classes, K)``: row ``c`` holds the weight of each channel for class ``c``."""
        if self._dense is not None:
            w = ops.transpose(ops.cast(self._dense.kernel, "float32"))
        else:
            w = ops.eye(self._channels, dtype="float32")  # channel c is class c
        if self.graph.output_activation == "sigmoid" and w.shape[0] == 1:
            w = ops.concatenate([-w, w], axis=0)  # the scores of one sigmoid unit z are [-z, z]
        return w

    def raw_maps(self, images, class_idx, target_fn=None):
        if target_fn is not None:
            raise ValueError(
                "CAM explains a class through the Dense layer's weights; a callable target has no "
                "such weights. Pass class indices, or use keras_cam.GradCAM for callable targets."
            )
        acts, outputs = self.graph.forward(images)
        scored = self.target_scores(outputs, class_idx)
        a = ops.cast(acts[0], "float32")
        w = ops.take(self.class_weights(), scored[1], axis=0)
        return self.reduce_channels(_layout.weigh_channels(a, w)), scored


class EigenCAM(Explainer):
    """Eigen-CAM (Muhammad and Yeasin, IJCNN 2020): no gradients, no class.

    The map is the first principal component of the target layer's
    activations: per image, the ``h * w`` channel vectors ``A_ij`` are centred
    and projected on their first principal axis; the axis's sign is chosen so
    that the map correlates positively with the mean activation
    ``mean_k A^k``, and the map is ``ReLU`` of the projection. The map is the
    same whatever the target class (the explanation still reports the scores
    of ``targets``).

    Example:
        >>> maps = keras_cam.EigenCAM(model)(images)            # (N, H, W) in [0, 1]
    """

    def raw_maps(self, images, class_idx, target_fn=None):
        acts, outputs = self.graph.forward(images)
        scored = self.target_scores(outputs, class_idx, target_fn)
        return ops.relu(principal_component(ops.cast(acts[0], "float32"))), scored


class ChannelExplainer(Explainer):
    """Base of the methods that weight the channels from the activations alone:
    one forward pass, then ``ReLU(sum_k w_k A^k)`` with the method's
    :meth:`channel_weights` (no class enters the weights)."""

    _weights_channels = True

    def raw_maps(self, images, class_idx, target_fn=None):
        acts, outputs = self.graph.forward(images)
        scored = self.target_scores(outputs, class_idx, target_fn)
        a = ops.cast(acts[0], "float32")
        return self.reduce_channels(_layout.weigh_channels(a, self.channel_weights(a))), scored

    def channel_weights(self, a):
        """``(N, K)`` weights from the feature maps ``(N, *s, K)``."""
        raise NotImplementedError


class FEM(ChannelExplainer):
    """Feature Explanation Method (Fuad et al., 2020): no gradients, no class.

    Each channel is weighted by how often it fires well above its own mean:
    ``w_k = mean_ij [A^k_ij > mu_k + k sigma_k]``, where ``mu_k`` and
    ``sigma_k`` are the mean and population standard deviation of ``A^k``
    over the positions; map ``= ReLU(sum_k w_k A^k)``. A constant channel
    gets weight 0. The map is the same whatever the target class (the
    explanation still reports the scores of ``targets``).

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        k: the threshold, in standard deviations above the mean (>= 0).
        **kwargs: the options of :class:`keras_cam.Explainer`.

    Example:
        >>> maps = keras_cam.FEM(model)(images)                 # (N, H, W) in [0, 1]
        >>> wider = keras_cam.FEM(model, k=1)(images)
    """

    def __init__(self, model, layer=None, *, k=2.0, **kwargs):
        if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)) or not k >= 0:
            raise ValueError(
                f"`k` must be a number >= 0 (standard deviations above a channel's mean); received {k!r}."
            )
        super().__init__(model, layer, **kwargs)
        self.k = float(k)

    def channel_weights(self, a):
        axes = _layout.spatial_axes(a)
        mean = ops.mean(a, axis=axes, keepdims=True)
        var = ops.mean(ops.square(a - mean), axis=axes, keepdims=True)
        return ops.mean(ops.cast(a > mean + self.k * ops.sqrt(var), "float32"), axis=axes)


class RandomCAM(ChannelExplainer):
    """Random channel weights: the baseline every metric should beat.

    ``w_k ~ U(-1, 1)``, drawn once from ``seed`` (the same weights for every
    image and every call); map ``= ReLU(sum_k w_k A^k)``. It shows what a
    map that only follows where the activations are large scores, without
    any knowledge of the class.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        seed: the seed of the weights (an int).
        **kwargs: the options of :class:`keras_cam.Explainer`.

    Example:
        >>> floor = keras_cam.RandomCAM(model, seed=0)(images)
    """

    def __init__(self, model, layer=None, *, seed=0, **kwargs):
        self.seed = check_seed(seed)
        super().__init__(model, layer, **kwargs)

    def channel_weights(self, a):
        w = ops.convert_to_tensor(self.weights(int(a.shape[-1])))
        return ops.zeros_like(a[(slice(None),) + (0,) * (len(a.shape) - 2)]) + w[None]

    def weights(self, channels):
        """``(K,)`` float32: the weights, drawn on the host from ``seed`` (the same on every backend)."""
        return np.random.default_rng(self.seed).uniform(-1.0, 1.0, channels).astype(np.float32)
