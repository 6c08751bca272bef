"""Targets for image-text models and query-based detectors (KerasHub).

- :class:`TextSimilarity`: the image-text similarity logit of a CLIP or
  SigLIP model, for the text that goes with each image;
  :func:`text_inputs` pairs images with prompts (token ids, or strings with a
  KerasHub tokenizer) and :func:`explain_texts` returns one map per image and
  prompt in one call.
- :class:`GeneratedToken`: the logit of one output token of a causal
  vision-language model (PaliGemma) at one position.
- :class:`QueryDetection`: one query of a DETR-style detector (D-FINE),
  chosen by index or by the box it predicts.

The model is never modified; each target reads what the model returns.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from keras_cam import _compat
from keras_cam import backend as _backend
from keras_cam import targets as _targets
from keras_cam._compat import ops

__all__ = ["TextSimilarity", "GeneratedToken", "QueryDetection", "text_inputs", "explain_texts", "image_token_span"]


def _output_shapes(model):
    """``{name: shape}`` of a model's dict outputs, or {} when unknown."""
    try:
        structure = model.output
    except (AttributeError, ValueError, RuntimeError):
        return {}
    if not isinstance(structure, dict):
        return {}
    return {k: tuple(v.shape) for k, v in structure.items()}


def _input_names(model):
    try:
        structure = model.input
    except (AttributeError, ValueError, RuntimeError):
        return []
    return sorted(structure) if isinstance(structure, dict) else []


def _vocabulary_size(model):
    """The text encoder's vocabulary size of a CLIP / SigLIP / PaliGemma model, or None."""
    for owner in (model, getattr(model, "backbone", None), getattr(model, "text_encoder", None)):
        size = getattr(owner, "vocabulary_size", None)
        if isinstance(size, numbers.Integral):
            return int(size)
    return None


# ---------------------------------------------------------------------------
# Image-text similarity (CLIP, SigLIP)


def _text_model_error(model, what):
    names = _input_names(model)
    return ValueError(
        f"{what} explains an image-text model (a KerasHub CLIPBackbone or SigLIPBackbone: inputs "
        f"'images' and 'token_ids', output 'vision_logits'); model {getattr(model, 'name', model)!r} "
        f"has the inputs {names or 'of a single-input model'} and the outputs "
        f"{sorted(_output_shapes(model)) or 'of one tensor'}. For an image-only model, explain a "
        f"class (targets=int) or an embedding (keras_cam.targets.Similarity) instead."
    )


class TextSimilarity(_targets.Target):
    """The similarity logit of each image with its own text (CLIP, SigLIP).

    A KerasHub ``CLIPBackbone`` or ``SigLIPBackbone`` takes a batch of
    images and a batch of token ids and returns ``"vision_logits"``
    ``(N_images, N_texts)``. With the image and text embeddings ``u_i`` and
    ``v_j``, CLIP's entry is ``t * cos(u_i, v_j)`` (``t`` its learned
    temperature ``exp(logit_scale)``) and SigLIP's ``t * cos(u_i, v_j) + b``.
    The score of input ``i`` is the diagonal entry ``S_i = logits[i, i]``:
    image ``i`` against the text in row ``i`` of ``token_ids``, the pairing
    :func:`text_inputs` builds. The other texts of the batch do not enter
    ``S_i``, so a batch gives the same maps as single calls.

    Raises:
        ValueError: (when explaining) the model has no text input or no
            ``vision_logits`` output.

    Example:
        >>> from keras_cam.multimodal import TextSimilarity, text_inputs
        >>> x = text_inputs(clip, images, [[49406, 320, 2368, 49407]])  # one prompt, as token ids
        >>> maps = keras_cam.GradCAM(clip)(x, targets=TextSimilarity())
    """

    whole_outputs = True
    OUTPUT = "vision_logits"

    def values(self, graph, images):
        if graph is not None:
            shapes = _output_shapes(graph.model)
            if "token_ids" not in _input_names(graph.model) or self.OUTPUT not in shapes:
                raise _text_model_error(graph.model, "TextSimilarity")
        return ()

    def score(self, outputs, *values):
        if not isinstance(outputs, dict) or self.OUTPUT not in outputs:
            raise ValueError(f"TextSimilarity needs the model's output {self.OUTPUT!r} (a dict); "
                             f"received {type(outputs).__name__}.")
        logits = ops.cast(outputs[self.OUTPUT], "float32")
        n = int(logits.shape[0])
        if int(logits.shape[1]) != n:
            raise ValueError(f"TextSimilarity pairs each image with one text: {n} images met "
                             f"{int(logits.shape[1])} texts. Build the inputs with text_inputs().")
        return ops.sum(logits * ops.eye(n, dtype="float32"), axis=1)


def _token_rows(model, texts, tokenizer, sequence_length):
    """Prompts as an ``(M, L)`` int32 array of token ids."""
    if isinstance(texts, str) or (isinstance(texts, Sequence) and texts and all(isinstance(t, str) for t in texts)):
        strings = [texts] if isinstance(texts, str) else list(texts)
        if tokenizer is None:
            raise ValueError(
                f"`texts` are strings ({strings[0][:40]!r}, ...), and no `tokenizer` was given: pass "
                f"the model's KerasHub tokenizer (e.g. keras_hub.models.CLIPTokenizer), or token ids.")
        rows = []
        for s in strings:
            ids = tokenizer(s)
            if isinstance(ids, dict):
                ids = ids["token_ids"]
            rows.append(np.asarray(_compat.to_host(ids)).reshape(-1).astype(np.int64))
    else:
        if _backend.is_tensor(texts):
            texts = np.asarray(_compat.to_host(texts))
        if isinstance(texts, np.ndarray):
            if texts.ndim == 1:
                texts = texts[None]
            rows = list(texts)
        elif isinstance(texts, Sequence) and texts and all(isinstance(t, numbers.Integral) for t in texts):
            rows = [np.asarray(texts)]
        elif isinstance(texts, Sequence) and texts:
            rows = [np.asarray(t) for t in texts]
        else:
            raise TypeError(f"`texts` must be strings, token ids (M, L) or a list of token-id lists; "
                            f"received {type(texts).__name__}.")
        for r in rows:
            if r.ndim != 1 or not np.issubdtype(r.dtype, np.integer):
                raise TypeError(f"Token ids must be 1-D integer sequences; received shape {r.shape}, dtype {r.dtype}.")
    length = sequence_length or max(len(r) for r in rows)
    if any(len(r) > length for r in rows):
        raise ValueError(f"A prompt has {max(len(r) for r in rows)} tokens, more than "
                         f"`sequence_length={length}`.")
    pad = int(getattr(tokenizer, "pad_token_id", None) or 0)
    ids = np.full((len(rows), length), pad, np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    vocab = _vocabulary_size(model)
    if ids.size and (ids.min() < 0 or (vocab is not None and ids.max() >= vocab)):
        raise ValueError(f"Token ids must lie in 0..{'?' if vocab is None else vocab - 1} (the text "
                         f"encoder's vocabulary); received ids from {ids.min()} to {ids.max()}.")
    return ids.astype(np.int32)


def text_inputs(model, images, texts, tokenizer=None, sequence_length=None):
    """The inputs of an image-text model for every pair of an image and a prompt.

    Args:
        model: a KerasHub ``CLIPBackbone`` or ``SigLIPBackbone`` (inputs
            ``"images"`` and ``"token_ids"``).
        images: ``(N, H, W, C)`` images (or one image ``(H, W, C)``).
        texts: ``M`` prompts: strings (with ``tokenizer``), an ``(M, L)``
            array of token ids, or a list of token-id lists (padded with the
            tokenizer's pad id, else 0).
        tokenizer: a callable from a string to token ids, e.g. the model's
            KerasHub tokenizer, for string prompts.
        sequence_length: pad the token ids to this length (the longest
            prompt's by default; SigLIP expects its own fixed length).

    Returns:
        ``{"images": (N * M, H, W, C), "token_ids": (N * M, L)}``, image-major:
        row ``i * M + j`` is image ``i`` with prompt ``j``.

    Raises:
        ValueError: the model takes no text, or token ids outside the vocabulary.
    """
    if "token_ids" not in _input_names(model) or "images" not in _input_names(model):
        raise _text_model_error(model, "text_inputs")
    x = np.asarray(_compat.to_host(images), np.float32)
    if x.ndim == 3:
        x = x[None]
    ids = _token_rows(model, texts, tokenizer, sequence_length)
    n, m = x.shape[0], ids.shape[0]
    return {"images": np.repeat(x, m, axis=0), "token_ids": np.tile(ids, (n, 1))}


def explain_texts(explainer, images, texts, tokenizer=None, sequence_length=None, **kwargs):
    """One map per image and prompt for a CLIP / SigLIP model: ``(N, M, H, W)``.

    Runs ``explainer`` once on :func:`text_inputs` with :class:`TextSimilarity`.

    Args:
        explainer: an explainer of the model, e.g. ``keras_cam.GradCAM(clip)``.
        images: ``(N, H, W, C)`` images (or one image ``(H, W, C)``).
        texts: ``M`` prompts, as for :func:`text_inputs`.
        tokenizer: for string prompts, as for :func:`text_inputs`.
        sequence_length: as for :func:`text_inputs`.
        **kwargs: passed to the explainer call (``upsample=``, ``normalize=``, ...).

    Returns:
        ``(N, M, H, W)`` maps: image ``i`` with prompt ``j`` at ``[i, j]``.

    Example:
        >>> maps = explain_texts(keras_cam.GradCAM(clip), images, ["a dog", "a cat"], tokenizer=tok)
        >>> keras_cam.plot(images, {p: maps[:, j] for j, p in enumerate(["a dog", "a cat"])})
    """
    x = text_inputs(explainer.model, images, texts, tokenizer, sequence_length)
    n = int(np.asarray(images).shape[0]) if np.ndim(images) == 4 else 1
    maps = np.asarray(_compat.to_host(explainer(x, targets=TextSimilarity(), **kwargs)))
    return maps.reshape((n, -1) + maps.shape[1:])


# ---------------------------------------------------------------------------
# A generated token (PaliGemma)


def image_token_span(model):
    """``(start, count)``: where a vision-language decoder's image tokens lie in its sequence.

    PaliGemma's decoder runs over ``[P image tokens, L text tokens]``
    (``P = backbone.image_sequence_length``, one token per patch of the
    vision tower), and its output ``(N, L, vocabulary)`` covers the text
    positions: output position ``p`` is decoder position ``P + p``.

    Args:
        model: a KerasHub causal vision-language model (or its backbone).

    Returns:
        ``(0, P)`` for PaliGemma.

    Raises:
        ValueError: the model is not one whose image tokens have a fixed place
            (Gemma 3 interleaves them where its ``vision_indices`` say).
    """
    backbone = getattr(model, "backbone", model)
    count = getattr(backbone, "image_sequence_length", None)
    if isinstance(count, numbers.Integral) and count > 0:
        return 0, int(count)
    raise ValueError(
        f"The attention methods read a vision-language decoder's attention over its image tokens, which "
        f"must have a fixed place in the sequence (PaliGemma: the first `image_sequence_length`); model "
        f"{getattr(model, 'name', model)!r} ({type(model).__name__}) places them where its inputs say "
        f"(Gemma 3's `vision_indices`), or has none. Explain it with keras_cam.GradCAM(model)(x, "
        f"targets=GeneratedToken(...)): one map per image.")


class GeneratedToken(_targets.Target):
    """The logit of token ``t`` at position ``p`` of a causal vision-language model.

    A KerasHub ``PaliGemmaCausalLM`` returns, for the prompt's ``L`` tokens,
    next-token logits ``z`` ``(N, L, vocabulary)``: ``z[:, p]`` scores the token
    that follows position ``p``. ``S = z[p, t]``; with ``token=None``, ``t`` is
    the top token at ``p``, the one greedy decoding generates. To explain a
    token of a generated answer, append the answer's tokens before it to the
    prompt and take the position before it.

    Args:
        position: the position ``p`` in the output sequence; negative counts
            from the end (``-1``, the default, is the last).
        token: None (the top token), a token id for every input, or one id
            per input.

    Raises:
        ValueError: (when explaining) the position lies outside the sequence
            or the token outside the vocabulary; the output is not
            ``(N, L, vocabulary)``.

    Example:
        >>> from keras_cam.multimodal import GeneratedToken
        >>> maps = keras_cam.GradCAM(paligemma)(x, targets=GeneratedToken(position=-1))
    """

    def __init__(self, position=-1, token=None):
        if isinstance(position, bool) or not isinstance(position, numbers.Integral):
            raise TypeError(f"`position` must be an int; received {position!r}.")
        self.position = int(position)
        if token is None:
            self.token = np.full((1,), _targets.TOP1, np.int32)
        elif isinstance(token, numbers.Integral) and not isinstance(token, bool):
            if token < 0:
                raise ValueError(f"`token` must be a token id >= 0; received {token}.")
            self.token = np.full((1,), int(token), np.int32)
        else:
            t = np.asarray(token)
            if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer) or t.size == 0:
                raise TypeError(f"`token` must be None, an int or one int per input; received shape "
                                f"{t.shape}, dtype {t.dtype}.")
            if (t < 0).any():
                raise ValueError(f"`token` must hold token ids >= 0; received {t.tolist()[:10]}.")
            self.token = t.astype(np.int32)

    def _key(self):
        return (self.position,)

    def values(self, graph, images):
        shape = _targets.static_output_shape(graph) if graph is not None else None
        if shape is not None:
            if len(shape) != 3:
                raise ValueError(
                    f"GeneratedToken explains a causal language model's logits (N, sequence, vocabulary); "
                    f"model {graph.model.name!r} outputs shape {shape}. For a classifier, pass a class index.")
            vocab = shape[-1]
            if vocab is not None and (self.token >= vocab).any():
                raise ValueError(f"`token` {self.token.tolist()[:10]} is out of range for a vocabulary of "
                                 f"{vocab} (valid: 0..{vocab - 1}).")
        return (_targets.per_input_rows(self.token, images, "token"),)

    def score(self, outputs, *values):
        z = ops.cast(outputs, "float32")
        if len(z.shape) != 3:
            raise ValueError(f"GeneratedToken needs logits (N, sequence, vocabulary); the output has "
                             f"shape {tuple(z.shape)}.")
        length = int(z.shape[1])
        if not -length <= self.position < length:
            raise ValueError(
                f"`position={self.position}` is outside the sequence of {length} tokens (valid: "
                f"{-length}..{length - 1}); the positions are those of `token_ids`.")
        z = z[:, self.position % length]
        token = ops.cast(values[0], "int32") if values else ops.convert_to_tensor(self.token)
        token = ops.broadcast_to(token, (int(z.shape[0]),))
        idx = ops.where(token < 0, ops.cast(ops.argmax(z, axis=-1), "int32"), token)
        return ops.take_along_axis(z, idx[:, None], axis=1)[:, 0]


# ---------------------------------------------------------------------------
# A query of a DETR-style detector (D-FINE)


class QueryDetection(_targets.Target):
    """One object query of a KerasHub ``DFineObjectDetector``, scored by its class logit.

    A query-based detector returns a fixed set of ``Q`` queries, each with one
    box ``b_q`` (``"pred_boxes"``, ``(N, Q, 4)``, relative centre-size) and
    class logits ``z_q`` (``"logits"``, ``(N, Q, classes)``); there are no
    anchors and no overlapping duplicates to sum. The score is one query's
    logit, ``S = z_{q*, c}``, with ``q*`` either given (``query=``) or the
    query whose predicted box overlaps ``box`` most,
    ``q* = argmax_q IoU(b_q, B)`` (chosen on the model's output for each
    input; the choice carries no gradient). Unlike
    :class:`keras_cam.targets.Detection` for an anchor-based RetinaNet,
    which sums the logits of every anchor overlapping the box beyond a
    threshold, one query is explained.

    Args:
        category: the class ``c``.
        box: ``(4,)`` or ``(N, 4)``, the box to match (e.g. one the detector
            found), in ``box_format``; or None with ``query``.
        query: the query index ``q*``; or None with ``box``.
        box_format: the format of ``box``; None takes the detector's
            ``bounding_box_format``.

    Raises:
        ValueError: neither or both of ``box`` and ``query``; (when
            explaining) the query or class is out of range, or the model is
            not a query-based detector.

    Example:
        >>> from keras_cam.multimodal import QueryDetection
        >>> found = detector.predict(images)
        >>> box, cls = found["boxes"][0, 0], int(found["labels"][0, 0])
        >>> maps = keras_cam.GradCAM(detector)(images[:1], targets=QueryDetection(cls, box=box))
    """

    whole_outputs = True
    in_frame = True
    BOXES, LOGITS = "pred_boxes", "logits"

    def __init__(self, category, box=None, query=None, box_format=None):
        _targets.check_index("category", category, None, "")
        if int(category) < 0:
            raise ValueError(f"`category` must be a class index >= 0; received {category}.")
        if (box is None) == (query is None):
            raise ValueError("Give either `box` (the query whose box matches it best) or `query` (an index).")
        if query is not None:
            _targets.check_index("query", query, None, "")
            if int(query) < 0:
                raise ValueError(f"`query` must be a query index >= 0; received {query}.")
        if box is not None:
            b = np.asarray(box, dtype=np.float64)
            if b.ndim not in (1, 2) or b.shape[-1] != 4:
                raise ValueError(f"`box` must be one box (4,) or one per input (N, 4); received shape {b.shape}.")
            if not np.isfinite(b).all():
                raise ValueError("`box` contains NaN or Inf.")
            box = b if b.ndim == 2 else b[None]
        if box_format is not None and box_format not in _targets.BOX_FORMATS:
            raise ValueError(f"Unknown `box_format` {box_format!r}; use one of {_targets.BOX_FORMATS}.")
        self.category, self.box, self.box_format = int(category), box, box_format
        self.query = None if query is None else int(query)

    def _key(self):
        # The class and the query travel with the batch as values: every query target of a
        # detector shares one compiled call, and every box target another.
        return (self.query is None,)

    def values(self, graph, images):
        if graph is None or images is None:
            raise ValueError("QueryDetection needs the detector and the input batch; explain batches "
                             "with an explainer: `keras_cam.GradCAM(detector)(images, targets=...)`.")
        model = graph.model
        shapes = _output_shapes(model)
        if self.BOXES not in shapes or self.LOGITS not in shapes:
            raise ValueError(
                f"QueryDetection explains a query-based detector (a KerasHub DFineObjectDetector: "
                f"outputs {self.LOGITS!r} (N, queries, classes) and {self.BOXES!r} (N, queries, 4)); "
                f"model {model.name!r} has the outputs {sorted(shapes) or 'of one tensor'}. For a "
                f"RetinaNet, use keras_cam.targets.Detection.")
        queries, classes = shapes[self.LOGITS][1], shapes[self.LOGITS][2]
        _targets.check_index("category", self.category, classes, f"a detector with {classes} classes")
        category = np.array([self.category], np.int32)
        if self.query is not None:
            _targets.check_index("query", self.query, queries, f"a detector with {queries} queries")
            return (category, np.array([self.query], np.int32))
        height, width = int(images.shape[1]), int(images.shape[2])
        fmt = self.box_format or getattr(model, "bounding_box_format", None) or "yxyx"
        box = _targets.per_input_rows(_targets.to_xyxy(self.box, fmt, height, width), images, "box")
        if (box[:, 2] <= box[:, 0]).any() or (box[:, 3] <= box[:, 1]).any():
            raise ValueError(f"`box` {self.box.tolist()[:4]} read as {fmt!r} has no area (x2 <= x1 or "
                             f"y2 <= y1); give its format with `box_format=`.")
        # In the detector's relative frame (its boxes are fractions of the image).
        return (category, (box / np.array([width, height, width, height])).astype(np.float32))

    def score(self, outputs, *values):
        if not isinstance(outputs, dict) or self.BOXES not in outputs or self.LOGITS not in outputs:
            raise ValueError(f"QueryDetection needs the detector's outputs {self.LOGITS!r} and "
                             f"{self.BOXES!r} (a dict); received {type(outputs).__name__}.")
        category, which = values
        raw = ops.cast(outputs[self.LOGITS], "float32")                         # (N, Q, classes)
        n = int(raw.shape[0])
        category = ops.broadcast_to(ops.cast(category, "int32"), (n,))
        logits = ops.take_along_axis(raw, category[:, None, None], axis=2)[..., 0]  # (N, Q)
        if self.query is not None:
            query = ops.broadcast_to(ops.cast(which, "int32"), (n,))
            return ops.take_along_axis(logits, query[:, None], axis=1)[:, 0]
        b = ops.stop_gradient(ops.cast(outputs[self.BOXES], "float32"))  # (cx, cy, w, h), relative
        corners = ops.stack([b[..., 0] - b[..., 2] / 2, b[..., 1] - b[..., 3] / 2,
                             b[..., 0] + b[..., 2] / 2, b[..., 1] + b[..., 3] / 2], axis=-1)
        iou = _targets.box_iou(corners, which[:, None, :])
        best = ops.cast(ops.argmax(iou, axis=1), "int32")
        return ops.take_along_axis(logits, best[:, None], axis=1)[:, 0]
