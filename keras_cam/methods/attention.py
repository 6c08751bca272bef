"""Transformer-native methods: maps read from the attention probabilities.

Notation (per image): block ``b = 1..B`` of a transformer (in the order the
blocks run) has attention probabilities ``A_b`` ``(heads, L, L)`` over ``L``
tokens (:mod:`keras_cam.attention` captures them), ``S`` is the explained
score (the logit of the target class by default) and ``G_b = dS/dA_b``.
``E_h`` is the mean over heads, ``x^+ = max(x, 0)``, ``I`` the identity.
A method gives a relevance row ``r`` ``(L,)`` over the tokens; its patch
tokens are laid on the patch grid with the token-grid rules of
:mod:`keras_cam.layout` (class, distillation and register tokens dropped,
the grid inferred from the input's size, or ``reshape=``) and upsampled to
the input size as every other map.

The row read is the class token's (token 0) when the sequence has leading
non-patch tokens, else the mean of all rows (a model that pools its patch
tokens); ``token=`` picks another row. Only square (self-)attention of the
most common length ``L`` enters a rollout; cross-attention and pooling
attention (a single query, e.g. SigLIP's head) are left out, except in
:class:`GradientRollout` with ``modalities=`` (Chefer's bi-modal rules).

**A vision-language decoder** (PaliGemma: Gemma's decoder over ``[P image
tokens, T text tokens]``): by default only the decoder's attention layers
are used, the row read is decoder position ``P + p`` for a
:class:`keras_cam.multimodal.GeneratedToken` at output position ``p``
(``token=`` indexes the decoder's sequence instead), and the map is that
row's entries over the ``P`` image-token columns, on the patch grid:
rollout's ``R[P + p, :P]``, Chefer's ``(R - I)[P + p, :P]``, LeGrad's
``mean_b mean_i E_h (G_b)^+_{i, :P}``.

**A windowed, hierarchical model** (Swin) is refused: its blocks attend
within local windows that shift from block to block, patch merging replaces
each 2x2 tokens by one between stages, and there is no class token, so no
single token sequence runs through the blocks for a rollout to follow; the
error names Grad-CAM.
"""

from __future__ import annotations

import collections

from keras_cam import attention as _attention
from keras_cam import backend as _backend
from keras_cam import layout as _layout
from keras_cam import multimodal as _multimodal
from keras_cam._compat import ops
from keras_cam.base import Explainer

FUSIONS = ("mean", "max", "min")


def fuse_heads(a, fusion="mean"):
    """``(N, heads, L, L') -> (N, L, L')``: the heads' mean, maximum or minimum."""
    if fusion == "mean":
        return ops.mean(a, axis=1)
    if fusion == "max":
        return ops.max(a, axis=1)
    return ops.min(a, axis=1)


def discard_lowest(a, ratio):
    """Zero the ``floor(ratio L L')`` smallest entries of each ``(L, L')`` matrix of ``a`` ``(N, L, L')``.

    Entries below the ``(k+1)``-th smallest value ``t`` (``k = floor(ratio L L')``)
    are set to 0; values tied with ``t`` are kept, so ties never make more than
    ``k`` entries go.
    """
    size = int(a.shape[1]) * int(a.shape[2])
    k = int(ratio * size)
    if k == 0:
        return a
    flat = ops.reshape(a, (-1, size))
    t = ops.sort(flat, axis=-1)[:, k]
    return ops.where(a < ops.reshape(t, (-1, 1, 1)), ops.zeros_like(a), a)


def rollout(attentions, fusion="mean", discard_ratio=0.0):
    """Attention rollout (Abnar and Zuidema 2020) of ``[(N, heads, L, L)]`` in block order.

    ``Â_b = (F_h A_b + I) / rowsum(F_h A_b + I)`` (``F_h`` the head fusion,
    after :func:`discard_lowest`), ``R = Â_B ... Â_2 Â_1``. Returns ``R`` ``(N, L, L)``.
    """
    r = None
    for a in attentions:
        fused = discard_lowest(fuse_heads(ops.cast(a, "float32"), fusion), discard_ratio)
        eye = ops.eye(int(fused.shape[-1]), dtype="float32")
        hat = fused + eye
        hat = hat / ops.sum(hat, axis=-1, keepdims=True)
        r = hat if r is None else ops.matmul(hat, r)
    return r


def weighted_attention(a, g):
    """Chefer et al.'s ``Ā = E_h (G ⊙ A)^+`` ``(N, L, L')`` from ``A`` and ``G = dS/dA``."""
    return ops.mean(ops.relu(ops.cast(g, "float32") * ops.cast(a, "float32")), axis=1)


def _residual_normalized(r):
    """Eq. 8-9 of Chefer et al.: ``(R - I)`` with rows scaled to sum 1 (0 where they sum to 0), plus ``I``."""
    eye = ops.eye(int(r.shape[-1]), dtype=r.dtype)
    x = r - eye
    return ops.divide_no_nan(x, ops.sum(x, axis=-1, keepdims=True)) + eye


def chefer_relevance(steps, lengths):
    """Chefer et al.'s relevance maps after a sequence of attention layers.

    Args:
        steps: ``[(s, q, Ā)]`` in the order the layers ran: tokens of modality
            ``s`` attend to tokens of modality ``q`` with ``Ā`` ``(N, L_s, L_q)``
            (:func:`weighted_attention`); ``s == q`` is self-attention.
        lengths: ``{modality: L}``.

    Returns:
        ``{(m, n): R^{mn}}`` ``(N, L_m, L_n)``, starting from ``R^{mm} = I``,
        ``R^{mn} = 0`` and updated per layer (eq. 6-7 and 10-11 of the paper):

        - self-attention in ``s``: ``R^{sm} += Ā R^{sm}`` for every modality ``m``;
        - ``s`` attending to ``q``: ``R^{sq} += (R̄^{ss})^T Ā R̄^{qq}`` and
          ``R^{ss} += Ā R^{qs}`` (both from the values before the layer), with
          ``R̄`` the residual normalization of eq. 8-9.
    """
    if not steps:
        raise ValueError("No attention layer to propagate relevance through (`steps` is empty).")
    zero = ops.zeros_like(steps[0][2][:, :1, :1])  # (N, 1, 1): the batch axis of every R
    r = {}
    for m, lm in lengths.items():
        for k, lk in lengths.items():
            base = ops.eye(lm, dtype="float32") if m == k else ops.zeros((lm, lk), "float32")
            r[(m, k)] = zero + base[None]
    for s, q, a in steps:
        if s == q:
            for m in lengths:
                r[(s, m)] = r[(s, m)] + ops.matmul(a, r[(s, m)])
        else:
            ss = _residual_normalized(r[(s, s)])
            qq = _residual_normalized(r[(q, q)])
            new_sq = r[(s, q)] + ops.matmul(ops.transpose(ss, (0, 2, 1)), ops.matmul(a, qq))
            new_ss = r[(s, s)] + ops.matmul(a, r[(q, s)])
            r[(s, q)], r[(s, s)] = new_sq, new_ss
    return r


class AttentionExplainer(Explainer):
    """Base of the attention methods: capture the attention, read one row, lay it on the grid.

    Args:
        model: a Keras model with attention layers; never modified.
        layer: must be None (the methods read attention layers, ``layers=``).
        layers: the attention layers to use (paths, names or layers); None:
            all of them (:func:`keras_cam.list_attention_layers`).
        token: the row (query token) whose relevance is mapped: None for the
            class token (or the mean of all rows when no token precedes the
            patches), an int index into the sequence (negative counts from
            the end).
        **kwargs: the options of :class:`keras_cam.Explainer` (``output``,
            ``linearize``, ``batch_size``, ``aug_smooth``, ``image_input``,
            ``data_format``, ``reshape``).
    """

    uses_layer = False
    _method_name = "An attention method"

    def __init__(self, model, layer=None, *, layers=None, token=None, **kwargs):
        if layer is not None:
            raise ValueError(
                f"{type(self).__name__} reads the model's attention layers, not one target layer; "
                f"received layer={layer!r}. Pass `layers=` (attention layers, see "
                f"keras_cam.list_attention_layers(model)) or nothing for all of them."
            )
        if token is not None and (isinstance(token, bool) or not isinstance(token, int)):
            raise TypeError(f"`token` must be None (the class token) or an int row index; received {token!r}.")
        super().__init__(model, None, **kwargs)
        found = _attention.resolve_attention_layers(self.model, layers, type(self).__name__)
        sites = [_attention.attention_site(layer) for _, layer in found]
        windowed = [path for (path, _), site in zip(found, sites) if site.windowed]
        if windowed:
            raise ValueError(
                f"{type(self).__name__} follows one sequence of tokens through every attention block and "
                f"reads the row of a class token (or of all tokens); {windowed[0]!r} "
                f"({type(dict(found)[windowed[0]]).__name__}) attends only within local windows, which shift "
                f"from block to block, and the patch merging between stages changes the tokens themselves "
                f"(4 become 1), with no class token to read: a hierarchical windowed model (Swin) has no "
                f"such sequence, and the method is not defined on it. Explain it with keras_cam.GradCAM(model) "
                f"(its default layer is the last stage's tokens) or another CAM; the window probabilities "
                f"themselves are captured by keras_cam.attention.AttentionCapture."
            )
        self.decoder = any(site.decoder for site in sites)
        if self.decoder and layers is None:
            # A vision-language model: the decoder's attention over the image and text tokens.
            found = [(p, layer) for (p, layer), site in zip(found, sites) if site.decoder]
        elif self.decoder and not all(site.decoder for site in sites):
            raise ValueError(
                f"`layers` mixes a language decoder's attention layers with others ({[p for p, _ in found][:4]}); "
                f"pass the decoder's layers (a map over its image tokens) or the vision tower's (a map over "
                f"its patches), not both."
            )
        self.attention_layers = found
        self.token = token
        self.image_span = _multimodal.image_token_span(self.model) if self.decoder else None

    def _layer_specs(self, layer):
        return []

    def capture(self, tap=None):
        """A fresh :class:`keras_cam.attention.AttentionCapture` of :attr:`attention_layers`."""
        return _attention.AttentionCapture(self.attention_layers, tap)

    def self_attention(self, records):
        """The records of square attention ``(N, heads, L, L)`` of the most common ``L``, in call order."""
        square = [r for r in records if int(r.probabilities.shape[-1]) == int(r.probabilities.shape[-2])]
        if not square:
            names = sorted({r.path for r in records}) or [p for p, _ in self.attention_layers]
            raise ValueError(
                f"{type(self).__name__}: no self-attention (square attention L x L) was recorded when the "
                f"model ran (attention layers {names[:6]}). The layers must be called on the explained "
                f"input, and compute their probabilities with a softmax (MultiHeadAttention's own)."
            )
        length = collections.Counter(int(r.probabilities.shape[-1]) for r in square).most_common(1)[0][0]
        return [r for r in square if int(r.probabilities.shape[-1]) == length]

    def grid_layout(self, length, images):
        """The :class:`~keras_cam.layout.FeatureLayout` of ``length`` tokens on the input's patch grid."""
        lay = _layout.describe((None, length, 1), 2, tuple(images.shape[1:-1]), reshape=self.graph.reshape)
        if lay is None or len(images.shape) != 4:
            raise ValueError(
                f"{type(self).__name__}: the attention runs over {length} tokens, which fit no patch grid "
                f"of the {tuple(images.shape[1:-1])} input (at most {_layout.MAX_PREFIX_TOKENS} leading "
                f"class/register tokens). Pass `reshape=(h, w)`, the patch grid, or a callable `reshape=`."
            )
        return lay

    def row(self, r, lay):
        """The relevance row ``(N, L)`` of ``r`` ``(N, L, L)`` for :attr:`token`."""
        length = int(r.shape[-2])
        if self.token is None:
            return r[:, 0] if lay.prefix > 0 or lay.reshape is not None else ops.mean(r, axis=1)
        if not -length <= self.token < length:
            raise ValueError(
                f"`token={self.token}` is outside the sequence of {length} tokens; pass an index in "
                f"[{-length}, {length - 1}] (0 is the class token), or None."
            )
        return r[:, self.token % length]

    def decoder_row(self, length, target_fn):
        """The decoder row read: ``P + p`` for a ``GeneratedToken(position=p)`` (``P`` image
        tokens precede the text), or :attr:`token`, an index into the decoder's sequence."""
        start, count = self.image_span
        if self.token is not None:
            if not -length <= self.token < length:
                raise ValueError(f"`token={self.token}` is outside the decoder's sequence of {length} tokens "
                                 f"({count} image tokens, then the text); pass an index in "
                                 f"[{-length}, {length - 1}], or None for the GeneratedToken's position.")
            return self.token % length
        target = getattr(target_fn, "target", target_fn)
        if not isinstance(target, _multimodal.GeneratedToken):
            raise ValueError(
                f"{type(self).__name__} on a vision-language decoder reads the attention row of the explained "
                f"output position: pass targets=keras_cam.multimodal.GeneratedToken(position, token) (or "
                f"token=, a row of the decoder's sequence); received {type(target).__name__}.")
        text = length - start - count
        if not -text <= target.position < text:
            raise ValueError(f"`position={target.position}` is outside the sequence of {text} text tokens "
                             f"(valid: {-text}..{text - 1}).")
        return start + count + target.position % text

    def mapped(self, r, images, target_fn=None):
        """``(N, h, w)`` maps from relevance ``r``: ``(N, L, L)`` (a row is read) or ``(N, L)`` rows.

        On a vision-language decoder, the row :meth:`decoder_row` and the
        columns of the image tokens, laid on the patch grid.
        """
        if not self.decoder:
            lay = self.grid_layout(int(r.shape[-1]), images)
            return self.on_grid(self.row(r, lay) if len(r.shape) == 3 else r, lay)
        start, count = self.image_span
        if len(r.shape) == 3:
            r = r[:, self.decoder_row(int(r.shape[-1]), target_fn)]
        lay = self.grid_layout(count, images)
        return self.on_grid(r[:, start:start + count], lay)

    @staticmethod
    def on_grid(row, lay):
        """``(N, L)`` relevance as ``(N, h, w)`` maps over the patch tokens."""
        return lay.view(row[:, :, None])[..., 0]

    def forward_with(self, images, class_idx, target_fn, tap=None):
        """Run the model with capture: ``(records, target_scores(...))``."""
        cap = self.capture(tap)
        outputs = self.graph.run(images, hooks=[cap])
        if not cap.records:
            raise ValueError(
                f"{type(self).__name__}: the attention layers {[p for p, _ in self.attention_layers][:6]} "
                f"were not called when the model ran, or computed no probabilities; choose layers on the "
                f"path from the input to the output."
            )
        return cap.records, self.target_scores(outputs, class_idx, target_fn)

    def gradients(self, images, class_idx, target_fn):
        """``(records, {key: dS/dA}, target_scores(...))`` from one forward and backward pass."""
        found = {}

        def forward(tap):
            found["records"], scored = self.forward_with(images, class_idx, target_fn, tap)
            return scored[0], scored

        _, scored, taps, grads, _ = _backend.tapped_gradients(forward)
        # The probabilities as the backend returns them (on JAX the recorded ones belong to its trace).
        records = [_attention.AttentionRecord(rec.path, taps[rec.key], rec.key) for rec in found["records"]]
        out = {}
        for rec in records:
            g = grads.get(rec.key)
            out[rec.key] = ops.zeros_like(rec.probabilities) if g is None else g
        return records, out, scored


def _check_fusion(fusion):
    if fusion not in FUSIONS:
        raise ValueError(f"`head_fusion` must be one of {', '.join(map(repr, FUSIONS))}; received {fusion!r}.")
    return fusion


class AttentionRollout(AttentionExplainer):
    """Attention rollout (Abnar and Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers").

    The attention of every block, heads fused (``F_h``: mean, max or min) and
    the residual connection modelled by the identity:
    ``Â_b = (F_h A_b + I) / rowsum(F_h A_b + I)``; ``R = Â_B ... Â_2 Â_1``;
    the map is the row of ``R`` of the class token (see :mod:`this module
    <keras_cam.methods.attention>`) over the patch tokens. With
    ``discard_ratio = r``, the ``floor(r L^2)`` smallest entries of each
    fused ``F_h A_b`` are zeroed first (:func:`discard_lowest`), which keeps
    the strongest attention paths. The map does not depend on the target
    class: it shows where the class token gathers information.

    One forward pass, no gradient.

    Args:
        model: a Keras model with attention layers; never modified.
        layer: must be None (the attention layers are ``layers``).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"``.
        discard_ratio: in ``[0, 1)``: the fraction of smallest attention entries zeroed per block.
        layers: the attention layers (paths, names or layers); None: all of them
            (:func:`keras_cam.list_attention_layers`).
        token: the row read: None for the class token (the mean of all rows when
            no token precedes the patches), or an int index (negative from the end).
        **kwargs: the options of :class:`keras_cam.Explainer`.

    Example:
        >>> maps = keras_cam.AttentionRollout(vit, head_fusion="max", discard_ratio=0.9)(images)
    """

    def __init__(self, model, layer=None, *, head_fusion="mean", discard_ratio=0.0, layers=None, token=None,
                 **kwargs):
        self.head_fusion = _check_fusion(head_fusion)
        if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) \
                or not 0 <= discard_ratio < 1:
            raise ValueError(f"`discard_ratio` must be a number in [0, 1); received {discard_ratio!r}.")
        self.discard_ratio = float(discard_ratio)
        super().__init__(model, layer, layers=layers, token=token, **kwargs)

    def raw_maps(self, images, class_idx, target_fn=None):
        records, scored = self.forward_with(images, class_idx, target_fn)
        records = self.self_attention(records)
        r = rollout([rec.probabilities for rec in records], self.head_fusion, self.discard_ratio)
        return self.mapped(r, images, target_fn), scored


class GradientRollout(AttentionExplainer):
    """Gradient-weighted attention rollout: Chefer, Gur and Wolf, ICCV 2021, "Generic
    Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers".

    Per block, the attention weighted by its gradient and averaged over heads,
    ``Ā_b = E_h (G_b ⊙ A_b)^+`` (eq. 5), propagates the relevance
    ``R = I``, ``R <- R + Ā_b R`` in block order (eq. 6); the map is the row of
    ``R - I`` of the class token over the patch tokens. Unlike rollout it
    depends on the target class.

    **Bi-modal models** (``modalities=``): tokens of several modalities
    (e.g. ``"text"`` and ``"image"``), each with self-attention layers and
    co-attention layers from one modality to another. ``modalities`` maps
    each attention layer (its path or name) to ``(s, q)``: its queries are
    tokens of ``s``, its keys of ``q``. The relevance matrices ``R^{mn}``
    are then updated by the paper's rules (:func:`chefer_relevance`: eq. 6-7
    for self-attention, 10-11 with the residual normalization of eq. 8-9 for
    co-attention), and the map is the row ``token`` of ``R^{s i}`` with ``s =
    query_modality`` and ``i = image_modality`` (the image's tokens, laid on
    the patch grid), minus the identity when ``s == i``.

    One forward and one backward pass.

    Args:
        model: a Keras model with attention layers; never modified.
        layer: must be None (the attention layers are ``layers``).
        modalities: None (one modality: every square attention is
            self-attention over the image's tokens), or ``{layer: (s, q)}``.
        image_modality: the modality whose tokens are the image patches.
        query_modality: the modality of the row read (default: ``image_modality``).
        layers: the attention layers; None: all of them (with ``modalities``: those it names).
        token: the row read, as in :class:`AttentionRollout`; with ``modalities``
            an index into the ``query_modality`` tokens (None: its token 0).
        **kwargs: the options of :class:`keras_cam.Explainer`.

    Example:
        >>> maps = keras_cam.GradientRollout(vit)(images, targets=3)
        >>> cam = keras_cam.GradientRollout(vqa, modalities={"txt_self": ("text", "text"),
        ...     "img_self": ("image", "image"), "txt_to_img": ("text", "image")},
        ...     query_modality="text", image_input="image")
    """

    def __init__(self, model, layer=None, *, modalities=None, image_modality="image", query_modality=None,
                 layers=None, token=None, **kwargs):
        super().__init__(model, layer, layers=layers, token=token, **kwargs)
        self.image_modality = image_modality
        self.query_modality = image_modality if query_modality is None else query_modality
        self.modalities = None
        if modalities is not None:
            if not isinstance(modalities, dict) or not modalities:
                raise TypeError(f"`modalities` must be a dict {{attention layer: (query modality, key modality)}}; "
                                f"received {modalities!r}.")
            from keras_cam import layers as _layers
            table = {}
            for spec, pair in modalities.items():
                path, layer_ = _layers.resolve(self.model, spec)
                if not _attention.is_attention_layer(layer_):
                    raise ValueError(f"`modalities` names {path!r}, which is not an attention layer; "
                                     f"keras_cam.list_attention_layers(model) lists them.")
                if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                    raise TypeError(f"`modalities[{spec!r}]` must be a pair (query modality, key modality); "
                                    f"received {pair!r}.")
                table[path] = tuple(pair)
            named = {m for pair in table.values() for m in pair}
            for which, m in (("image_modality", self.image_modality), ("query_modality", self.query_modality)):
                if m not in named:
                    raise ValueError(f"`{which}={m!r}` is none of the modalities in `modalities` ({sorted(named)}).")
            self.modalities = table
            self.attention_layers = [(p, l) for p, l in self.attention_layers if p in table]

    def raw_maps(self, images, class_idx, target_fn=None):
        records, grads, scored = self.gradients(images, class_idx, target_fn)
        if self.modalities is None:
            records = self.self_attention(records)
            length = int(records[0].probabilities.shape[-1])
            steps = [("image", "image", weighted_attention(rec.probabilities, grads[rec.key])) for rec in records]
            r = chefer_relevance(steps, {"image": length})[("image", "image")]
            return self.mapped(r - ops.eye(length, dtype=r.dtype), images, target_fn), scored
        lengths, steps = {}, []
        for rec in records:
            s, q = self.modalities[rec.path]
            shape = rec.probabilities.shape
            for m, n in ((s, int(shape[-2])), (q, int(shape[-1]))):
                if lengths.setdefault(m, n) != n:
                    raise ValueError(f"`modalities`: layer {rec.path!r} gives modality {m!r} {n} tokens, "
                                     f"another layer {lengths[m]}; check the (query, key) pairs.")
            steps.append((s, q, weighted_attention(rec.probabilities, grads[rec.key])))
        for m in (self.image_modality, self.query_modality):
            if m not in lengths:
                raise ValueError(f"No attention layer of modality {m!r} ran; check `modalities`.")
        rel = chefer_relevance(steps, lengths)
        r = rel[(self.query_modality, self.image_modality)]
        if self.query_modality == self.image_modality:
            r = r - ops.eye(int(r.shape[-1]), dtype=r.dtype)
        lay = self.grid_layout(lengths[self.image_modality], images)
        length = int(r.shape[-2])
        token = 0 if self.token is None else self.token
        if not -length <= token < length:
            raise ValueError(f"`token={token}` is outside the {length} tokens of modality "
                             f"{self.query_modality!r}; pass an index in [{-length}, {length - 1}].")
        return self.on_grid(r[:, token % length], lay), scored


class LeGrad(AttentionExplainer):
    """LeGrad (Bousselham, Boggust, Chaybouti, Strobelt and Kuehne, 2024, "LeGrad: An
    Explainability Method for Vision Transformers via Feature Formation Sensitivity").

    The sensitivity of the score to every block's attention map: per block,
    ``E_b = mean_i E_h (G_b)^+_{i,:}`` (the positive gradient, averaged over
    heads and over the query rows ``i``), and the map is ``mean_b E_b`` over
    the patch tokens. Gradients only, no attention values: the map shows
    which tokens, attended to anywhere, would most raise ``S``.

    The paper scores each block through the model's head applied to that
    block's output (a "logit lens"); that needs the head's structure, which a
    generic model does not expose, so here every block is differentiated
    from the model's own score ``S`` (the paper's last-block term, and the
    deeper-block terms through the layers above them).

    One forward and one backward pass.

    Args:
        model: a Keras model with attention layers; never modified.
        layer: must be None (the attention layers are ``layers``).
        layers: the attention layers; None: all of them.
        **kwargs: the options of :class:`keras_cam.Explainer`.

    Example:
        >>> maps = keras_cam.LeGrad(vit)(images, targets=[1, 4])
    """

    def __init__(self, model, layer=None, *, layers=None, **kwargs):
        super().__init__(model, layer, layers=layers, token=None, **kwargs)

    def raw_maps(self, images, class_idx, target_fn=None):
        records, grads, scored = self.gradients(images, class_idx, target_fn)
        records = self.self_attention(records)
        per_block = [ops.mean(ops.relu(ops.cast(grads[rec.key], "float32")), axis=(1, 2)) for rec in records]
        e = ops.mean(ops.stack(per_block), axis=0)
        return self.mapped(e, images, target_fn), scored
