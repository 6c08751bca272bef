"""FullGrad: the input gradient and every bias gradient, as saliency.

Srinivas and Fleuret (NeurIPS 2019) write a ReLU network's score, with its
biases ``b`` (convolutions, dense layers and the effective bias of a batch
normalization), exactly as

    S(x) = sum(dS/dx * x) + sum over biases of dS/db * b

(*completeness*; ``dS/db_k`` is ``dS/dz^k`` summed over the positions of
``z``, the layer's output before its activation). The map shows both kinds of
terms where they sit: the input part ``|x_c * dS/dx_c|`` of every input
channel ``c``, and the bias part ``|b_k * dS/dz^k|`` of every channel ``k`` of
every convolution and batch normalization whose output is a map over the
input's spatial axes.

The pre-activation output ``z`` of a layer with a fused activation
(``Conv2D(..., activation="relu")``) is the argument of its ``activation``:
while the explainer's function is traced, that attribute is wrapped so that
``z`` is tapped (``backend.tapped_gradients``: watched by the tape, or made
differentiable as ``z + 0``); a batch normalization's ``call`` is wrapped to
tap its output. The wrappers apply to the explaining thread only and are
removed when the pass ends (``keras_cam/_patch.py``): the model itself is
never changed.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from keras_cam import _compat
from keras_cam import backend as _backend
from keras_cam import layers as _layers
from keras_cam import layout as _layout
from keras_cam import targets as _targets
from keras_cam._compat import ops
from keras_cam._patch import intercepted, wrapped_call
from keras_cam.base import Explainer, upsample

_CONVS = (
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
)


def _is(layer, names):
    keras = _compat.keras_of(layer)
    classes = tuple(getattr(keras.layers, n) for n in names if hasattr(keras.layers, n))
    return bool(classes) and isinstance(layer, classes)


def bias_kind(layer):
    """``"conv"``, ``"batchnorm"`` or ``"dense"`` for a layer whose bias FullGrad reads, else None.

    Convolutions and dense layers count only with a bias (``use_bias=True``);
    a batch normalization always has an effective bias (see :func:`effective_bias`).
    """
    if not _compat.is_layer(layer) or _compat.is_model(layer):
        return None
    if _is(layer, ("BatchNormalization",)):
        return "batchnorm"
    kind = "conv" if _is(layer, _CONVS) else "dense" if _is(layer, ("Dense",)) else None
    return kind if kind and getattr(layer, "bias", None) is not None else None


def effective_bias(layer):
    """The bias ``(K,)`` float32 of a convolution, dense or batch-normalization layer.

    A batch normalization at inference computes
    ``gamma (z - mean) / sqrt(var + eps) + beta``, a per-channel scale of ``z``
    plus ``beta - mean * gamma / sqrt(var + eps)``: that is its bias
    (``gamma = 1`` with ``scale=False``, ``beta = 0`` with ``center=False``).
    """
    def value(v):
        return ops.cast(ops.convert_to_tensor(v), "float32")

    if bias_kind(layer) != "batchnorm":
        return value(layer.bias)
    inv = ops.rsqrt(value(layer.moving_variance) + layer.epsilon)
    if layer.scale:
        inv = inv * value(layer.gamma)
    bias = -value(layer.moving_mean) * inv
    if layer.center:
        bias = bias + value(layer.beta)
    return bias


def _channel_axis(layer, kind, rank):
    """The channel axis (in ``0..rank-1``) of ``layer``'s output of ``rank``, or None."""
    if kind == "batchnorm":
        axis = layer.axis
        axes = [axis] if isinstance(axis, (int, np.integer)) else list(axis)
        if len(axes) != 1:
            return None  # normalized over several axes: no per-channel bias
        axis = int(axes[0])
    elif kind == "conv" and getattr(layer, "data_format", None) == "channels_first":
        axis = 1
    else:
        axis = -1
    return axis % rank if -rank <= axis < rank and rank >= 2 else None


def _channels_last(x, axis):
    """``x`` with its ``axis`` moved last."""
    rank = len(x.shape)
    if axis == rank - 1:
        return x
    return ops.transpose(x, (0,) + tuple(i for i in range(1, rank) if i != axis) + (axis,))


def channel_sum(parts):
    """``sum_k minmax(P^k)`` of parts ``(N, *s, K)``: each channel min-max scaled over its positions.

    A constant channel (all zeros included) adds zero.
    """
    parts = ops.convert_to_tensor(parts)
    rank = len(parts.shape)
    first = ops.transpose(parts, (0, rank - 1) + tuple(range(1, rank - 1)))  # (N, K, *s)
    flat = ops.reshape(first, (-1,) + tuple(int(d) for d in parts.shape[1:-1]))  # (N K, *s)
    scaled = ops.reshape(_layout.minmax(flat), (-1,) + tuple(int(d) for d in first.shape[1:]))
    return ops.sum(scaled, axis=1)


@contextlib.contextmanager
def _recording(layer, kind, record):
    """Route ``layer``'s pre-activation output through ``record`` inside the block."""
    if kind == "batchnorm" or getattr(layer, "activation", None) is None:
        with wrapped_call(layer, record):
            yield
        return

    def make(inner):  # inner: the activation as this thread sees it (linearized, for the head)
        def activation(z, *args, **kwargs):
            return inner(record(z), *args, **kwargs)
        return activation

    with intercepted(layer, "activation", make):
        yield


@dataclasses.dataclass
class BiasTerm:
    """One call of one bias layer, as :meth:`FullGrad.parts` found it.

    Attributes:
        path: the layer's path in the model (:func:`keras_cam.layers.walk`).
        kind: ``"conv"``, ``"batchnorm"`` or ``"dense"``.
        bias: ``(K,)`` the bias ``b`` (a batch normalization's effective bias).
        gradient: ``dS/dz`` ``(N, ..., K)``, ``z`` the layer's output before
            its activation, with the channel axis moved last.
        in_map: whether the term enters the map (a convolution or batch
            normalization whose output is a map of the input's spatial rank).
    """

    path: str
    kind: str
    bias: np.ndarray
    gradient: np.ndarray
    in_map: bool

    @property
    def bias_gradient(self):
        """``dS/db`` ``(N, K)``: ``dS/dz^k`` summed over the positions."""
        g = np.asarray(self.gradient, np.float64)
        return g.reshape(len(g), -1, g.shape[-1]).sum(axis=1)


@dataclasses.dataclass
class FullGradParts:
    """The full-gradient decomposition of the explained scores (:meth:`FullGrad.parts`).

    Attributes:
        inputs: ``(N, *S, C)`` the images, channels last.
        input_gradient: ``(N, *S, C)`` ``dS/dx``, channels last.
        scores: ``(N,)`` the explained scores ``S``.
        targets: ``(N,)`` the classes explained (None for target objects and callables).
        biases: one :class:`BiasTerm` per call of a bias layer, in call order.
    """

    inputs: np.ndarray
    input_gradient: np.ndarray
    scores: np.ndarray
    targets: np.ndarray | None
    biases: list

    def completeness(self):
        """``(N,)``: ``sum(dS/dx * x) + sum over biases of dS/db . b``, which equals
        :attr:`scores` for a piecewise-linear network (ReLU, max pooling) whose
        every bias is a convolution, dense or batch-normalization bias."""
        x = np.asarray(self.inputs, np.float64)
        total = (x * self.input_gradient).reshape(len(x), -1).sum(axis=1)
        for term in self.biases:
            total = total + term.bias_gradient @ np.asarray(term.bias, np.float64)
        return total


class FullGrad(Explainer):
    """FullGrad (Srinivas and Fleuret, NeurIPS 2019), as pytorch-grad-cam computes it.

    With ``S`` the explained score (the pre-softmax logit by default), ``x``
    the input and, for every convolution (1-D, 2-D, 3-D, depthwise, separable,
    transposed; with a bias) and batch normalization whose output ``z`` (before
    its activation) is a map over the input's spatial axes, ``b`` its bias (a
    batch normalization's effective bias
    ``beta - mean * gamma / sqrt(var + eps)``, see :func:`effective_bias`)::

        M = minmax( sum_c Up(minmax(|x_c dS/dx_c|))
                    + sum_layers sum_k Up(minmax(|b_k dS/dz^k|)) )

    Each channel is min-max scaled over its positions, then upsampled
    bilinearly to the input size (``Up``); since resizing is linear, the
    channels of a layer are summed before one resize. Dense biases do not
    enter the map (they enter :meth:`parts`). A layer without a bias adds
    nothing. There is no target layer: every bias layer the model runs counts
    (layers inside a SavedModel are not seen; their model gives the input part only).

    Args:
        model: a Keras model; never modified (activations and calls of its bias
            layers are intercepted only while the explainer's function is traced).
        layer: must be None: FullGrad uses every bias layer.
        output: for multi-output models, the output holding the class scores.
        linearize: differentiate the logit before a final softmax/sigmoid.
        batch_size: images per compiled call.
        aug_smooth: see :class:`keras_cam.Explainer`.
        image_input: see :class:`keras_cam.Explainer`.
        data_format: see :class:`keras_cam.Explainer`.
        reshape: accepted and checked like every explainer's, so that one set of
            options builds any method; with no target layer it changes nothing.

    Example:
        >>> maps = keras_cam.FullGrad(model)(images)            # (N, H, W) in [0, 1]
        >>> parts = keras_cam.FullGrad(model).parts(images)     # the decomposition
        >>> np.allclose(parts.completeness(), parts.scores)     # on a ReLU network
    """

    def __init__(self, model, layer=None, *, output=None, linearize=True, batch_size=32, aug_smooth=False,
                 image_input=None, data_format=None, reshape=None):
        if layer is not None:
            raise ValueError(
                f"FullGrad takes no target layer: it reads every convolution, batch-normalization "
                f"and dense bias of the model. Received layer={layer!r}; pass layer=None."
            )
        super().__init__(model, None, output=output, linearize=linearize, batch_size=batch_size,
                         aug_smooth=aug_smooth, image_input=image_input, data_format=data_format,
                         reshape=reshape)
        # (path, layer, kind) of every layer with a bias, in the order of the model's tree.
        self.bias_layers = [(path, found, kind) for path, found in _layers.walk(self.model)
                            if (kind := bias_kind(found)) is not None]

    uses_layer = False

    def _layer_specs(self, layer):
        return []  # no target layer: the gradients are taken at the input and at every bias layer

    def decompose(self, images, class_idx, target_fn=None):
        """The decomposition, traceable: ``(dS/dx, target_scores(...), terms)``.

        Args:
            images: channels-last float32 ``(N, *S, C)``.
            class_idx: ``(N,)`` int32 classes (``targets.TOP1`` for top-1).
            target_fn: a bound target or callable, or None.

        Returns:
            ``dS/dx`` ``(N, *S, C)``; the scores as :meth:`target_scores`; per
            call of a bias layer a tuple ``(path, kind, bias (K,), dS/dz with
            its channel axis last, in_map)``, all float32.
        """
        calls = []  # (entry, key) per tapped call, in call order

        def forward(tap, x):
            del calls[:]  # JAX runs the forward pass twice (shapes, then gradients)

            def recorder(entry):
                def record(z):
                    if _backend.is_tensor(z):
                        key = len(calls)  # one key per call: a layer called twice has two terms
                        calls.append((entry, key))
                        z = tap(key, z)
                    return z
                return record

            hooks = [_recording(layer, kind, recorder((path, layer, kind)))
                     for path, layer, kind in self.bias_layers]
            scored = self.target_scores(self.graph.run(x, hooks=hooks), class_idx, target_fn)
            return scored[0], scored

        _, scored, taps, grads, (grad,) = _backend.tapped_gradients(forward, (images,))
        image_rank = len(images.shape)
        terms = []
        for (path, layer, kind), key in calls:
            z = taps.get(key)
            if z is None:  # not a float tensor: nothing to differentiate
                continue
            rank = len(z.shape)
            axis = _channel_axis(layer, kind, rank)
            if axis is None:
                continue
            in_map = kind != "dense" and rank == image_rank and axis in (1, rank - 1)
            g = grads.get(key)
            g = ops.zeros(tuple(z.shape), "float32") if g is None else ops.cast(g, "float32")
            if in_map:  # a spatial map, channels first or last: the layout's view
                g = _layout.FeatureLayout("spatial", channels_first=axis == 1).view(g)
            else:
                g = _channels_last(g, axis)
            terms.append((path, kind, effective_bias(layer), g, in_map))
        return ops.cast(grad, "float32"), scored, terms

    def raw_maps(self, images, class_idx, target_fn=None):
        grad, scored, terms = self.decompose(images, class_idx, target_fn)
        size = tuple(int(d) for d in images.shape[1:-1])
        total = channel_sum(ops.abs(images * grad))
        for _, _, bias, g, in_map in terms:
            if in_map:
                total = total + upsample(channel_sum(ops.abs(g * bias)), size)
        return total, scored

    def parts(self, images, targets=None):
        """The full-gradient decomposition of the explained scores, computed eagerly.

        Args:
            images: as for calling the explainer (one example or a batch).
            targets: as for calling the explainer.

        Returns:
            A :class:`FullGradParts`, always with a batch axis: the input,
            ``dS/dx``, ``S`` and every bias layer's call with its bias and
            ``dS/dz`` (dense layers and non-spatial batch normalizations
            included). ``parts.completeness()`` is ``S`` on a ReLU network.
        """
        batch, others, _, target, values, idx = self.read_call(images, targets)
        target_fn = _targets.bind(target, values)
        with self.graph.holding(others):
            grad, (scores, used, _), terms = self.decompose(ops.convert_to_tensor(batch),
                                                            ops.convert_to_tensor(idx), target_fn)
        host = _compat.to_host
        return FullGradParts(
            inputs=host(batch),
            input_gradient=host(grad),
            scores=host(scores),
            targets=None if target is not None else host(used),
            biases=[BiasTerm(path, kind, host(b), host(g), in_map) for path, kind, b, g, in_map in terms],
        )
