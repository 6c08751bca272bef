"""``keras_cam.audit``: explain a whole dataset, cluster each class's maps, rank the clusters.

    result = keras_cam.audit(keras_cam.GradCAM(model), images, labels)
    result.clusters[0]            # class 0's most suspicious cluster
    result.save_html("audit.html")

The maps come from :func:`keras_cam.explain_dataset` (any ``tf.distribute``
strategy); only their small grid versions are kept (:mod:`keras_cam.audit.spray`),
``grid * grid`` floats per image, so the clustering runs on the gathered small
maps of the whole dataset in one process.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import warnings
import weakref

import sys

import numpy as np

from keras_cam._compat import ops, to_host
from keras_cam.audit import hotspots, spray
from keras_cam.audit import verify as interventions
from keras_cam.base import Explainer

# Member thumbnails shown per cluster in the report, and the largest side in pixels of the
# thumbnail kept for every image.
EXAMPLES = 16
THUMBNAIL = 64
# The audit keeps every image's class scores (n, C) for the verification's "before" when they come with
# "what"'s features and hold at most this many numbers (64 MB as float32); above it, verify scores
# the other-class images again.
LOGITS_KEPT = 2 ** 24
# The statistics that can form a class's group with n_clusters="auto" (see audit's `evidence`).
EVIDENCE = ("auto", "where", "what")
# Audit.verify's defaults, which the audit's own verification of each class's candidates uses too
# (audit's `verify`), so that Audit.verify with them returns what the audit kept.
PROOF = {"n_members": 32, "n_others": 32, "n_random": 3, "noise": 0.01}


@dataclasses.dataclass
class Cluster:
    """One group of images of a class whose maps look alike.

    Attributes:
        target: the explained class.
        indices: ``(size,)`` positions of the member images in the input order.
        mean_map: ``(g, g)`` the members' mean grid map (unit-norm grid maps
            averaged; see :mod:`keras_cam.audit.spray`).
        size: number of members.
        accuracy: share of members whose top-1 prediction is their label (None
            without labels).
        outside_energy: mean share of map energy outside the object (None
            without ``boxes`` or ``masks``).
        score: with ``n_clusters="auto"``, the score of the statistic that
            found the group (see ``evidence``, :mod:`keras_cam.audit.hotspots`),
            0 for the rest of the class; with SpRAy, ``consistency * distance *
            separation`` (times ``outside_energy`` when known), in [0, 1]; see
            :func:`keras_cam.audit.spray.cluster_scores`.
        level: the group's combined level (``n_clusters="auto"``): the
            Bonferroni level over ``tests``, ``min(1, len(tests) min_t p_t)``;
            else None.
        tests: the p-values the level combines: ``"where"`` and ``"what"``
            (the statistics, :mod:`keras_cam.audit.hotspots`) and, where the
            audit verified the class's candidate groups (its ``verify``),
            ``"verified where"`` / ``"verified what"`` (each candidate's
            verification level, :func:`keras_cam.audit.verify.level`; 1 for a
            candidate that could not be verified); None for the rest.
        evidence: ``"where"`` (a place in the maps) or ``"what"`` (channel
            ``channel`` of the explained layer, pooled over positions by
            ``pooling``: ``"mean"`` or ``"max"``), or None.
        region: ``(g, g)`` bool, the grid cells of the group's hotspot (None
            for a class kept whole).
        pixels: ``(H, W)`` bool, what :meth:`Audit.verify` intervenes on: for
            a "what" group, the pixels near ``region`` (within one layer cell)
            where its members' images stray from the rest of the class's
            (:func:`keras_cam.audit.verify.pixels_that_differ`); for a "where" group, those near
            ``region`` (within one grid cell) where they stray from other
            classes' images; both with the whole connected parts of those
            pixels they touch (:func:`artifact_pixels`). None: ``region``
            scaled up.
        image_wide: for a "what" group, whether no pixel of its members'
            images stands out from the rest's (a global feature such as a
            colour cast): :meth:`Audit.verify` then intervenes on the images'
            per-channel means, not on a region.
        consistency, distance, separation: the score's factors.
        representative: the member whose map is closest to ``mean_map``.
        examples: up to 16 members, the closest to ``mean_map`` first.
    """

    target: int
    indices: np.ndarray
    mean_map: np.ndarray
    size: int
    accuracy: float | None
    outside_energy: float | None
    score: float
    consistency: float
    distance: float
    separation: float
    representative: int
    examples: np.ndarray
    level: float | None = None
    region: np.ndarray | None = dataclasses.field(default=None, repr=False)
    shared_energy: float | None = None
    evidence: str | None = None
    channel: int | None = None
    pooling: str | None = None
    pixels: np.ndarray | None = dataclasses.field(default=None, repr=False)
    image_wide: bool = False
    tests: dict | None = None

    @property
    def suspicious(self):
        """Whether the level is at most :data:`~keras_cam.audit.hotspots.ALPHA`, and, for a group found by
        its place (``evidence == "where"``), the score at least :data:`~keras_cam.audit.hotspots.MIN_SCORE`
        or its own verification significant at that level."""
        return self.level is not None and self.level <= hotspots.ALPHA and (
            self.evidence == "what" or self.score >= hotspots.MIN_SCORE or self.proven)

    @property
    def proven(self):
        """Whether the group's own verification (``tests["verified <evidence>"]``) reaches the level
        :data:`~keras_cam.audit.hotspots.ALPHA` after the Bonferroni factor."""
        p = (self.tests or {}).get(f"verified {self.evidence}")
        return p is not None and len(self.tests) * p <= hotspots.ALPHA

    def to_dict(self):
        """The cluster as JSON-ready values (``indices`` and ``examples`` as lists of ints)."""
        return {
            "target": self.target, "size": self.size, "score": self.score, "level": self.level,
            "suspicious": self.suspicious, "tests": self.tests, "proven": self.proven,
            "shared_energy": self.shared_energy, "evidence": self.evidence,
            "channel": self.channel, "pooling": self.pooling, "image_wide": self.image_wide,
            "consistency": self.consistency, "distance": self.distance, "separation": self.separation,
            "accuracy": self.accuracy, "outside_energy": self.outside_energy,
            "representative": self.representative, "examples": [int(i) for i in self.examples],
            "indices": [int(i) for i in self.indices], "mean_map": np.round(self.mean_map, 6).tolist(),
            "region": None if self.region is None else self.region.astype(int).tolist(),
        }


@dataclasses.dataclass
class Audit:
    """What :func:`audit` found.

    Attributes:
        clusters: one :class:`Cluster` per cluster, ordered by class, then by
            ``score`` descending (the first cluster of a class is the one to
            look at first). The clusters partition the images.
        targets: ``(n,)`` the class explained per image (its label, or its
            top-1 class without labels).
        labels: ``(n,)`` the labels, or None.
        maps: ``(n, g, g)`` float32 the images' unit-norm grid maps.
        eigenvalues: per class, the smallest eigenvalues of its normalized
            graph Laplacian (the eigengaps chose the number of clusters).
        notes: per class, why it was kept as one cluster (too few images, all
            maps alike), when it was.
        method, model, layer: what explained the images.
        thumbnails: ``{index: (h, w, 3) uint8}`` every image, at most
            :data:`THUMBNAIL` pixels a side, as read by the audit.
        weights: the audited model's weights fingerprint
            (:func:`keras_cam.dataset.weights_fingerprint`): :meth:`verify`
            refuses a model trained or reloaded since.
        logits: ``(n, C)`` float32 every image's class scores, as read with
            "what"'s features (logits where the explainer linearizes the head),
            or None (``n_clusters=int``, or more than :data:`LOGITS_KEPT`
            numbers): :meth:`verify` reuses them for the other-class images'
            scores before the transplant.
    """

    clusters: list
    targets: np.ndarray
    labels: np.ndarray | None
    maps: np.ndarray
    eigenvalues: dict
    notes: dict
    method: str
    model: str
    layer: str
    thumbnails: dict = dataclasses.field(repr=False, default_factory=dict)
    scores: np.ndarray | None = dataclasses.field(repr=False, default=None)
    explainer: object = dataclasses.field(repr=False, default=None)
    images: object = dataclasses.field(repr=False, default=None)
    boxes: np.ndarray | None = dataclasses.field(repr=False, default=None)
    masks: np.ndarray | None = dataclasses.field(repr=False, default=None)
    batch_size: int = dataclasses.field(repr=False, default=64)
    verifications: dict = dataclasses.field(repr=False, default_factory=dict)
    concept_summaries: dict = dataclasses.field(repr=False, default_factory=dict)
    weights: str | None = dataclasses.field(repr=False, default=None)
    logits: np.ndarray | None = dataclasses.field(repr=False, default=None)

    def __len__(self):
        return len(self.clusters)

    def of_class(self, target):
        """The clusters of class ``target``, in score order."""
        return [c for c in self.clusters if c.target == int(target)]

    def assignment(self):
        """``(n,)`` the position in :attr:`clusters` of each image's cluster."""
        out = np.full(len(self.targets), -1, np.int64)
        for k, c in enumerate(self.clusters):
            out[c.indices] = k
        return out

    def to_dict(self, class_names=None):
        """The audit as JSON-ready values (what ``clusters.json`` holds)."""
        return {
            "format": "keras-cam/audit", "version": 1,
            "method": self.method, "model": self.model, "layer": self.layer,
            "images": int(len(self.targets)), "grid": list(self.maps.shape[1:]),
            "classes": {
                str(k): {"name": _name(class_names, k), "eigenvalues": [float(v) for v in self.eigenvalues[k]],
                         "note": self.notes.get(k)}
                for k in sorted(self.eigenvalues)
            },
            "clusters": [{**c.to_dict(), "target_name": _name(class_names, c.target),
                          "verification": (self.verifications[i].to_dict() if i in self.verifications else None)}
                         for i, c in enumerate(self.clusters)],
            "alpha": hotspots.ALPHA,
        }

    def suspicious(self, target):
        """The suspicious groups of class ``target`` (see :attr:`Cluster.suspicious`); empty: "no suspicious group"."""
        return [c for c in self.of_class(target) if c.suspicious]

    def verify(self, cluster, images=None, *, region=None, n_members=PROOF["n_members"], n_others=PROOF["n_others"],
               n_random=PROOF["n_random"], seed=0, noise=PROOF["noise"], batch_size=None):
        """Test by intervention whether the model depends on what ``cluster``'s maps point at.

        See :mod:`keras_cam.audit.verify`: the cluster's region is removed
        from its members (ROAD imputation) and pasted into other classes'
        images, each against same-size regions at random places (with the
        audit's ``boxes`` or ``masks``: places that cover as much of each
        member's object as the region does), with 95 % confidence intervals
        and a verdict. For an image-wide group
        (``cluster.image_wide``, e.g. a colour cast) without ``region=``, the
        members' per-channel means are moved to the rest of the class's and
        the group's mean offset is added to other classes' images, each
        against random offsets of the same size
        (:func:`keras_cam.audit.verify.run_image_wide`). The result is also
        kept in :attr:`verifications` (the report and ``clusters.json`` show it).

        Args:
            cluster: a :class:`Cluster` of this audit, or its position in
                :attr:`clusters`.
            images: the audited images, needed when the audit read a
                ``tf.data.Dataset``: an array ``(n, ...)`` in the order the
                audit read them, or a dataset that yields them in that order
                (read once). Checked against the audit's thumbnails. Without
                it, the array the audit was given is used.
            region: the pixels to intervene on instead of the cluster's
                region: an ``(H, W)`` bool mask or a box ``(y0, x0, y1, x1)``.
            n_members: the most members used (a seeded sample).
            n_others: the most other-class images used (a seeded sample).
            n_random: random regions per image.
            seed: the seed of the samples, the random regions and the
                imputation noise: the same seed gives the same numbers.
            noise: the imputation's noise (see :func:`keras_cam.metrics.impute`).
            batch_size: images per forward pass (default: the audit's).

        Returns:
            A :class:`keras_cam.audit.verify.Verification`.

        Raises:
            ValueError: for a cluster of another audit, images that do not
                match the audit's, or a region outside the image.
        """
        return _verify_cluster(self, cluster, images, region, n_members, n_others, n_random, seed, noise,
                               batch_size or self.batch_size)

    def concepts(self, cluster, images=None, *, k=5, n_members=64, seed=0, batch_size=None):
        """The cluster's top concepts: Deep Feature Factorization over its members at the audit's layer.

        See :mod:`keras_cam.concepts.audit`: DFF (:class:`keras_cam.DeepFeatureFactorization`)
        of a seeded sample of at most ``n_members`` members into ``k`` concepts, ranked by
        their mean share over the members. Kept in :attr:`concept_summaries` (the report shows it).

        Args:
            cluster: a :class:`Cluster` of this audit, or its position in :attr:`clusters`.
            images: the audited images, needed when the audit read a dataset (as for :meth:`verify`).
            k: the number of concepts, at most the layer's channels.
            n_members: the most members factorized.
            seed: the seed of the sample and of the factorization.
            batch_size: images per forward pass (default: the audit's).

        Returns:
            A :class:`keras_cam.concepts.audit.ClusterConcepts`.
        """
        from keras_cam.concepts.audit import cluster_concepts, cluster_position

        position = cluster_position(self, cluster)
        source = _VerifyImages(self, images, self.explainer, self.clusters[position].indices)
        return cluster_concepts(self, position, source.get, k=k, n_members=n_members, seed=seed,
                                batch_size=batch_size or self.batch_size)

    def verify_first(self, images=None, **kwargs):
        """:meth:`verify` the first (highest-ranked) group of every class; returns ``{class: Verification}``.

        A class kept whole (too few images, or all its maps alike: its group has no region) is
        skipped, and so is everything when only one class was audited (nothing to transplant into)."""
        out = {}
        for k in sorted({c.target for c in self.clusters}):
            first = self.of_class(k)[0]
            if first.region is not None and any(c.target != k for c in self.clusters):
                out[k] = self.verify(first, images, **kwargs)
        return out

    def save_json(self, path, class_names=None):
        """Write :meth:`to_dict` as JSON to ``path`` (atomically)."""
        from keras_cam.files import write_atomic as _write_atomic

        _write_atomic(path, (json.dumps(self.to_dict(class_names), indent=1) + "\n").encode("utf-8"))
        return path

    def save_html(self, path, class_names=None, title=None):
        """Write the report: one self-contained HTML file (see :mod:`keras_cam.audit.report`).

        Args:
            path: the ``.html`` file to write (replaced atomically).
            class_names: a list or dict of class names, for headings.
            title: the page's title.

        Returns:
            ``path``.

        Example:
            >>> keras_cam.audit(cam, images, labels).save_html("audit.html")
        """
        from keras_cam.audit.report import render
        from keras_cam.files import write_atomic as _write_atomic

        _write_atomic(path, render(self, class_names, title).encode("utf-8"))
        return path


def _name(class_names, k):
    if class_names is None:
        return None
    try:
        return str(class_names[int(k)])
    except (IndexError, KeyError, TypeError):
        return None


def audit(explainer, data, labels=None, *, boxes=None, masks=None, n_clusters="auto", max_clusters=8,
          n_neighbors=10, grid=16, evidence="auto", verify=True, strategy=None, batch_size=64, seed=0,
          verbose=1) -> Audit:
    """Audit a dataset for Clever-Hans behaviour: each class's shared hotspot, or SpRAy.

    Every image is explained (:func:`keras_cam.explain_dataset`, the data
    read once) and each map is reduced to a unit-norm ``grid x grid`` vector
    (:func:`keras_cam.audit.spray.to_grid`). Then, per explained class:

    - ``n_clusters="auto"`` (the default): the class's shared evidence
      (:mod:`keras_cam.audit.hotspots`), two statistics with their own
      nulls. "Where": the place where the class's maps put more tail energy
      than a null that moves each map onto another map's centre of mass
      keeps there, ``score = max_H (P(H) - mean_b P^(b)(H))``; its group is
      the images whose share of energy in that region is above Otsu's
      threshold. "What" (for gradient explainers): the channel ``k*`` of the
      explained layer whose activation, pooled over positions (its mean or
      its maximum), splits the class into two parts best, ``score = max_k eta2(k)`` against the same
      maximum over uniform columns; its group is the part with the higher
      explained scores, its region where ``k*`` fires more in the group than
      in the rest. The first group is that of the more significant
      statistic, the rest of the class the second; the ``level`` is
      ``min(1, 2 min(p_where, p_what))``. With ``verify`` (and the images
      given as an array), the class's candidate groups are then tested by
      intervention (:meth:`Audit.verify`): the "what" group, and the "where"
      group when ``boxes`` or ``masks`` are given. Each verification's level
      ``p_v`` (the p-value of its verdict, :func:`keras_cam.audit.verify.level`)
      joins the statistics': ``level = min(1, m min_t p_t)`` over the ``m``
      tests (2 to 4), and the group is the candidate of the smallest ``p_t``
      when that level is at most ``ALPHA``. A group is ``suspicious`` when
      ``level <= ALPHA`` (and, for a "where" group, ``score >= MIN_SCORE`` or
      its own verification significant).
    - an int ``n_clusters``: SpRAy (:mod:`keras_cam.audit.spray`): a
      symmetric ``n_neighbors``-nearest-neighbour graph, the smallest
      eigenvectors of ``L = I - D^-1/2 W D^-1/2``, seeded k-means, and the
      score ``||m_C|| * sqrt(1 - cos(m_C, m_R)) * (1 - cut(C, R) / vol(C)) [* e_C]``.

    :meth:`Audit.verify` then tests a group by intervention
    (:mod:`keras_cam.audit.verify`).

    Args:
        explainer: a keras_cam explainer (``keras_cam.GradCAM(model)``, ...).
        data: images ``(n, H, W, C)`` as the model takes them (numpy or
            tensor), or a ``tf.data.Dataset`` of images or ``(images,
            labels)``, batched or not. It is read once: a small thumbnail of
            every image and the predictions that accuracy needs are kept from
            that read, so a dataset that reshuffles or augments on each
            iteration is audited as it was seen (``indices`` are positions in
            that read).
        labels: with an array ``data``: ``(n,)`` classes or ``(n, C)``
            one-hot rows, or None. Maps are of each image's label when there
            are labels, else of its top-1 class; clusters are formed per
            explained class.
        boxes: ``(n, 4)`` object boxes ``(y0, x0, y1, x1)`` in pixels,
            end-exclusive, or None: gives each cluster's ``outside_energy``.
        masks: ``(n, H, W)`` object masks (nonzero = object), or None; instead
            of ``boxes``.
        n_clusters: ``"auto"`` (the shared hotspot's group and the rest of
            the class) or a number of SpRAy clusters per class.
        max_clusters: kept for SpRAy (the most clusters its eigengap may
            choose inside :func:`keras_cam.audit.spray.cluster`).
        n_neighbors: ``k`` of the neighbour graph. A class with at most
            ``k`` images is kept as one cluster (a warning says so).
        grid: side of the grid maps are reduced to (an int, or ``(h, w)``).
        evidence: with ``n_clusters="auto"``, which statistic forms each
            class's group: ``"auto"`` (the more significant one, as above),
            ``"where"`` or ``"what"`` (that one's group whatever its level;
            "what" needs a gradient explainer; a class none of whose
            channels varies keeps its "where" group). The level is the same in all
            three (the combined level of the class's tests): forcing one
            changes the group that :meth:`Audit.verify` tests, not the level.
        verify: with ``n_clusters="auto"``, test each class's candidate
            groups by intervention inside the audit and count the result in
            the level (above). It needs the images at hand: with a
            ``tf.data.Dataset`` the level is the statistics' alone (verify its
            groups afterwards with :meth:`Audit.verify` and ``images=``).
            It costs about ``2 (1 + n_random) (32 + 32)`` forward passes per
            candidate; False skips it.
        strategy: a ``tf.distribute.Strategy`` for the explain step (see
            :func:`keras_cam.explain_dataset`).
        batch_size: images per batch (for arrays and unbatched datasets).
        seed: seeds the eigensolver and k-means: the same seed gives the same
            clusters.
        verbose: 1 draws a progress bar while explaining, 0 is silent.

    Returns:
        An :class:`Audit`.

    Raises:
        TypeError: for a wrong explainer, data, labels or option type.
        ValueError: for fewer than two images, labels / boxes / masks that do
            not match the images, or a wrong option value.

    Example:
        >>> from keras_cam.demo import load_shortcut_model, make_dataset
        >>> images, labels, boxes, marked = make_dataset(400, seed=11, watermark=(0, 0.5))
        >>> cam = keras_cam.GradCAM(load_shortcut_model(), layer="conv4_relu")
        >>> result = keras_cam.audit(cam, images, labels, boxes=boxes)
        >>> first = result.of_class(0)[0]       # the marked images, looking at the corner
        >>> result.verify(first).verdict        # 'depends on the region (shortcut candidate)'
        >>> result.save_html("audit.html")
    """
    if not isinstance(explainer, Explainer):
        raise TypeError(
            f"`explainer` must be a keras_cam explainer such as keras_cam.GradCAM(model); "
            f"received {type(explainer).__name__}."
        )
    grid = _check_options(n_clusters, max_clusters, n_neighbors, grid, seed)
    _check_evidence(evidence, n_clusters, explainer)
    if not isinstance(verify, (bool, np.bool_)):
        raise TypeError(f"`verify` must be True or False; received {verify!r}.")
    if boxes is not None and masks is not None:
        raise ValueError("Pass `boxes` or `masks`, not both: they both say where the object is.")
    source = _Source(data, labels, batch_size)
    if source.n is not None:
        size = source.array.shape[2:4] if explainer.graph.data_format == "channels_first" else source.size
        _check_objects(boxes, masks, source.n, size)

    from keras_cam.dataset import explain_dataset, weights_fingerprint

    upsample = bool(explainer.aug_smooth or boxes is not None or masks is not None)
    grids, targets, probs, outside, correct, scores = [], [], [], [], [], []
    # "What" (hotspots.find_what) needs each image's pooled activations at the target layer, and their
    # class scores give the top-1 class where needed: from the maps' own forward pass where the
    # explainer allows it (Explainer.fuses_features), else one more compiled pass per batch
    # (class_features).
    pooled = [] if n_clusters == "auto" and _has_features(explainer) else None
    logits = [] if pooled is not None else None
    fused = pooled is not None and explainer.fuses_features
    seen = 0
    # One read of the data: the images pass through `source.recorded()` on their way to the explain
    # step, which keeps each one's thumbnail and, for the few whose label probability is at most 1/2,
    # its top-1 class. Nothing is read twice, so a dataset that reshuffles or augments is audited
    # as it was seen.
    thumbnails = []
    sigmoid = explainer.graph.output_activation == "sigmoid"
    with _quiet_dataset_retracing():
        results = explain_dataset(explainer, source.recorded(keep=2 * batch_size + 2),
                                  targets="labels" if source.has_labels else None, strategy=strategy,
                                  batch_size=batch_size, upsample=upsample, normalize=True, verbose=verbose,
                                  features=fused)
        for result in results:
            _read(result, explainer, source, grid, boxes, masks, sigmoid, batch_size, seen, thumbnails,
                  grids, targets, probs, correct, outside, pooled, logits)
            scores.append(np.asarray(result.scores, np.float64))
            seen += len(result.maps)
    n = seen
    if n < 2:
        raise ValueError(
            f"An audit compares the maps of many images; received {n} image. Pass a dataset "
            f"(at least n_neighbors + 1 = {n_neighbors + 1} images per class to find clusters)."
        )
    if boxes is not None or masks is not None:
        objects = boxes if boxes is not None else masks
        if len(objects) != n:
            raise ValueError(f"`{'boxes' if boxes is not None else 'masks'}` has {len(objects)} rows "
                             f"for {n} images; give one per image, in the dataset's order.")
    x = np.concatenate(grids)
    targets = np.concatenate(targets).astype(np.int64)
    probs = np.concatenate(probs).astype(np.float64)
    outside = np.concatenate(outside) if outside else None
    correct = np.concatenate(correct) if correct else None
    pooled = np.concatenate(pooled) if pooled else None
    explained = np.concatenate(scores).astype(np.float64)

    clusters, eigenvalues, notes, candidates = [], {}, {}, {}
    for k in np.unique(targets):
        members = np.flatnonzero(targets == k)
        if n_clusters == "auto":
            found = _strategies(x, targets, int(k), members, grid, n_neighbors, seed,
                                None if pooled is None else pooled[members], explained[members], evidence)
            if getattr(found, "hotspot", None) is not None:
                candidates[int(k)] = (members, found.hotspot)
        else:
            found = spray.cluster(x[members], n_clusters, max_clusters, n_neighbors, seed)
        eigenvalues[int(k)] = found.eigenvalues
        if found.note is not None:
            notes[int(k)] = found.note
            if n_neighbors >= len(members):
                warnings.warn(f"keras_cam.audit: class {int(k)} has {found.note}.", stacklevel=2)
        clusters.extend(_class_clusters(int(k), members, found, n_clusters == "auto", x, outside, grid, explainer,
                                        source.array, targets, seed, batch_size))
    # A class's group (the one with a level) first, then by score (SpRAy's clusters: by score).
    clusters.sort(key=_rank)
    result = Audit(
        clusters=clusters, targets=targets, labels=targets.copy() if source.has_labels else None,
        maps=x.reshape(n, *grid), eigenvalues=eigenvalues, notes=notes, method=type(explainer).__name__,
        model=str(explainer.model.name), layer=", ".join(str(p) for p in explainer.layer_paths),
        thumbnails=dict(enumerate(thumbnails)), scores=explained,
        explainer=explainer, images=source.array, boxes=None if boxes is None else np.asarray(boxes),
        masks=None if masks is None else np.asarray(masks), batch_size=int(batch_size),
        weights=weights_fingerprint(explainer.model),
        logits=np.concatenate(logits) if logits and sum(v.size for v in logits) <= LOGITS_KEPT else None,
    )
    if verify and source.array is not None and len(eigenvalues) > 1:
        kinds = ("where",) if boxes is not None or masks is not None else ()
        kinds += ("what",) if pooled is not None else ()
        for k, (members, hot) in candidates.items():
            _prove(result, k, members, hot, kinds, evidence, x, outside, grid, seed)
    if correct is not None:
        for c in result.clusters:
            c.accuracy = float(np.mean(correct[c.indices]))
    return result


def _rank(c):
    """The clusters' order: by class; a class's group (the one with a level) first, then by score."""
    return c.target, c.level is None, -c.score, int(c.indices[0])


def _class_clusters(k, members, found, auto, x, outside, grid, explainer, images, targets, seed, batch_size):
    """Class ``k``'s clusters from its clustering ``found`` (a group and the rest with
    ``n_clusters="auto"``, SpRAy's clusters otherwise), rated, with their regions."""
    rated = spray.cluster_scores(x[members], found.labels, found.affinity,
                                 None if outside is None else outside[members])
    out = []
    for c in range(found.n_clusters):
        cluster = _make_cluster(k, members[found.labels == c], x, rated, c, grid)
        if auto:
            _rate_strategy(cluster, found, c, x, members, grid)
        else:
            cluster.region = _cluster_region(x, members, found.labels == c, grid)
        if images is not None and cluster.evidence == "what" and cluster.level is not None:
            _channel_region(cluster, explainer, images, targets, grid, seed, batch_size)
        elif images is not None and cluster.evidence == "where" and cluster.level is not None:
            _place_pixels(cluster, images, targets, seed, explainer.graph.data_format == "channels_first")
        out.append(cluster)
    return out


def _prove(result, k, members, hot, kinds, evidence, x, outside, grid, seed):
    """Verify class ``k``'s candidate groups by intervention and count their levels in its group's level.

    ``kinds`` names the candidates verified: the "where" group (only with objects given: without them a
    group whose images hold their object in one place depends on that place, and random places off the
    object cannot tell it from an artifact there) and the "what" group (with a gradient explainer). The
    group's level is the Bonferroni level over the two statistics and these verifications,
    ``min(1, (2 + len(kinds)) min_t p_t)``; with ``evidence="auto"`` and that level at most ``ALPHA``, the
    group is the candidate of the smallest ``p_t``. The chosen group's verification is kept in
    ``result.verifications`` (:meth:`Audit.verify` with these options and the audit's seed returns it)."""
    start = next(i for i, c in enumerate(result.clusters) if c.target == k)
    count = sum(c.target == k for c in result.clusters)
    built = {hot.evidence: result.clusters[start:start + count]}
    tests, proofs = dict(hot.tests), {}
    for kind in kinds:
        tests[f"verified {kind}"] = 1.0
        if kind == "what" and hot.what is None:
            continue
        if kind not in built:
            grouped = _grouping(hot, kind)
            if grouped.n_clusters != count:
                continue
            built[kind] = sorted(_class_clusters(k, members, grouped, True, x, outside, grid, result.explainer,
                                                 result.images, result.targets, seed, result.batch_size), key=_rank)
        group = built[kind][0]
        if group.level is None or group.region is None or group.size < 2:
            continue
        clusters = result.clusters[:start] + built[kind] + result.clusters[start + count:]
        probe = dataclasses.replace(result, clusters=clusters, verifications={})
        try:
            with np.errstate(all="ignore"):
                proofs[kind] = _verify_cluster(probe, start, None, None, PROOF["n_members"], PROOF["n_others"],
                                               PROOF["n_random"], seed, PROOF["noise"], result.batch_size)
        except ValueError:    # no region to intervene on (no pixel, or all of them): nothing shown
            continue
        tests[f"verified {kind}"] = proofs[kind].level
    level = hotspots.combined_level(*tests.values())
    chosen = hot.evidence
    if evidence == "auto" and level is not None and level <= hotspots.ALPHA:
        best = min(tests, key=lambda t: 1.0 if tests[t] is None else tests[t]).split()[-1]
        chosen = best if best in built else chosen
    result.clusters[start:start + count] = built[chosen]
    group = result.clusters[start]
    group.level, group.tests = level, tests
    if chosen in proofs:
        result.verifications[start] = proofs[chosen]


def _strategies(x, targets, k, members, grid, n_neighbors, seed, pooled=None, explained=None, evidence="auto"):
    """Class ``k``'s groups by strategy (:mod:`keras_cam.audit.hotspots`): the images that share a
    place in their maps ("where") or a feature at the target layer ("what"), whichever is more
    significant (or the one ``evidence`` names), and the rest."""
    whole = np.zeros(len(members), np.int64)
    if len(members) <= n_neighbors:
        return spray.ClassClustering(whole, 1, np.zeros(0), None,
                                     f"{len(members)} image(s), not more than n_neighbors={n_neighbors}: "
                                     f"kept as one cluster")
    if float(np.max(np.ptp(x[members], axis=0))) <= 1e-6:
        return spray.ClassClustering(whole, 1, np.zeros(0), None, "all maps alike: kept as one cluster")
    found = hotspots.find(x[members], grid, seed=seed)
    what = None if pooled is None else hotspots.find_what(pooled, explained, seed=seed)
    if what is not None:  # column -> the layer's channel and its pooling (see class_features)
        width = pooled.shape[1] // len(POOLINGS)
        what.pooling, what.layer_channel = POOLINGS[what.channel // width], what.channel % width
    found.evidence = "where"
    found.combined = hotspots.combined_level(found.level, None if what is None else what.level)
    found.tests = {"where": found.level, "what": None if what is None else what.level}
    found.what = what
    # The "what" group replaces the "where" group when it is the more significant one and passes on
    # its own (a class with neither keeps its "where" group: the place its maps look at most), or when
    # `evidence` asks for it. A class none of whose channels varies has no "what" group and keeps "where".
    choice = "where"
    if what is not None and (evidence == "what" or (
            evidence == "auto" and what.level <= hotspots.ALPHA / 2
            and (found.level is None or what.level < found.level))):
        choice = "what"
    return _grouping(found, choice)


def _grouping(found, evidence):
    """The class split into the group of ``evidence``'s statistic (``"where"`` or ``"what"``) and the
    rest, as a :class:`~keras_cam.audit.spray.ClassClustering` carrying the statistics (``hotspot``)."""
    hot = copy.copy(found)
    hot.evidence = evidence
    hot.group = np.asarray(found.what.members if evidence == "what" else found.members, bool)
    labels = np.where(hot.group, 0, 1).astype(np.int64)
    if labels.min() == labels.max():
        labels[:] = 0
    elif labels[0] == 1:  # clusters are numbered by their first member (as SpRAy's)
        labels = 1 - labels
    result = spray.ClassClustering(labels, int(labels.max()) + 1, np.zeros(0), None)
    result.hotspot = hot
    return result


def _rate_strategy(cluster, found, c, x, members, grid):
    """The group gets the score of its statistic and the combined level; the rest of the class scores 0.

    A "where" group's region is its hotspot; a "what" group's region is where its members' maps put
    more energy than the rest of the class's (:func:`_cluster_region`)."""
    hot = getattr(found, "hotspot", None)
    if hot is None:
        cluster.score, cluster.level = 0.0, None
        return
    inside = found.labels == c
    group = found.n_clusters == 1 or bool(hot.group[inside].all())
    what = hot.what if hot.evidence == "what" else None
    if what is None:
        cluster.region = hot.region.copy()
        cluster.shared_energy = float(np.mean(hot.energy[inside]))
    else:
        cluster.region = _cluster_region(x, members, hot.group, grid)
        share = hotspots.shares(x[members]) @ cluster.region.ravel().astype(np.float64)
        cluster.shared_energy = float(np.mean(share[inside]))
    cluster.evidence = hot.evidence
    cluster.channel = None if what is None else int(what.layer_channel)
    cluster.pooling = None if what is None else what.pooling
    cluster.score = (float(hot.score) if what is None else float(what.score)) if group else 0.0
    cluster.level = hot.combined if group else None
    cluster.tests = dict(hot.tests) if group else None


def _channel_region(cluster, explainer, images, targets, grid, seed, batch_size, count=32):
    """A "what" group's region: where its channel ``k*`` fires more in its members than in the rest of
    the class, ``D = s (mean_members A_k* - mean_rest A_k*)`` with ``s`` the sign of ``D``'s mean
    (for a group that is the channel's low part, the rest minus the members), on a seeded sample of ``count`` images of each; the cells of
    the grid with ``D >= max D / 2``. Kept as it is (the maps' region) when ``D`` has no positive
    cell or the cells cover more than half the grid (a global feature such as a colour cast: the
    verification's random places of that size would overlap it).

    The region's pixels (``cluster.pixels``, what a verification intervenes on) are then narrowed to
    where the members' images stray from the rest's
    (:func:`keras_cam.audit.verify.pixels_that_differ`, the same samples), within one layer cell of
    the region's cells (a unit's receptive field reaches past its cell), and grown to the whole
    connected parts of those pixels (:func:`artifact_pixels`): the channel of a frame may fire along
    two of its sides only, and the members carry the whole frame.
    A layer cell spans several pixels (4 x 4 in the family), and a 2-pixel frame fills only part of
    the cells along the edges: removing or pasting whole cells moves the members' other pixels too,
    which random places of that size move as well. Where no pixel of the image stands out (a colour
    cast moves every pixel alike), the whole cells are kept and the group is marked ``image_wide``:
    its verification intervenes on the images' per-channel means instead (see
    :func:`keras_cam.audit.verify.run_image_wide`)."""
    rng = np.random.default_rng([int(seed), int(cluster.target), 0xC4A])
    rest = np.setdiff1d(np.flatnonzero(targets == cluster.target), cluster.indices)
    if len(rest) == 0:
        return
    picks = [np.sort(rng.choice(group, size=min(count, len(group)), replace=False)) for group in (cluster.indices, rest)]
    graph = explainer.graph
    means, pictures = [], []
    for group in picks:
        total, picture = 0.0, []
        for i in range(0, len(group), batch_size):
            x = np.asarray(images[group[i:i + batch_size]], np.float32)
            raw, layouts, _ = graph.capture(graph.to_channels_last(ops.convert_to_tensor(x)))
            a = to_host(layouts[0].view(raw[0]))[..., cluster.channel]
            total = total + a.astype(np.float64).sum(axis=0)
            if x.ndim == 4:
                picture.append(np.moveaxis(x, 1, -1) if graph.data_format == "channels_first" else x)
        means.append(total / len(group))
        pictures.append(np.concatenate(picture) if picture else None)
    d = means[0] - means[1]
    reach = 1
    if d.ndim == 2:
        reach = max(1, -(-grid[0] // d.shape[0]), -(-grid[1] // d.shape[1]))    # grid cells per layer cell
        d = interventions.pixel_region(d, grid) * np.sign(d.mean())    # cells of the grid; the members' side up
        region = d >= 0.5 * d.max()
        if d.max() > 0 and region.mean() <= 0.5:    # a verification compares with random places of its size
            cluster.region = region
    if pictures[0] is not None and cluster.region is not None:
        cluster.pixels, chosen = artifact_pixels(cluster.region, pictures[0], pictures[1], reach)
        cluster.image_wide = not chosen.any()


def _place_pixels(cluster, images, targets, seed, channels_first, count=32):
    """A "where" group's pixels (``cluster.pixels``): :func:`artifact_pixels` of its hotspot, within
    one grid cell, on seeded samples of ``count`` members and ``count`` images of the *other* classes.
    Not the rest of the class, as for "what": a place's group leaves some of the marked images in the
    rest (the maps of a few look elsewhere), which blurs the contrast, while images of other classes
    carry no artifact of this class. A place where no pixel stands out keeps its whole cells (an
    object that sits in one place differs from other classes' images by its texture, not at fixed
    pixels). Images only (4-D)."""
    others = np.flatnonzero(targets != cluster.target)
    if len(others) == 0 or cluster.region is None or np.ndim(images) != 4:
        return
    rng = np.random.default_rng([int(seed), int(cluster.target), 0x91AC])
    pictures = []
    for group in (cluster.indices, others):
        x = np.asarray(images[np.sort(rng.choice(group, size=min(count, len(group)), replace=False))], np.float32)
        pictures.append(np.moveaxis(x, 1, -1) if channels_first else x)
    cluster.pixels, _ = artifact_pixels(cluster.region, pictures[0], pictures[1], 1)


def artifact_pixels(region, members, rest, reach):
    """``(pixels, chosen)``: ``chosen`` ``(H, W)`` bool, the pixels where the images ``members`` stray
    from ``rest`` (:func:`keras_cam.audit.verify.pixels_that_differ`); ``pixels``, those within
    ``reach`` cells of the grid region ``region``, grown to the whole connected parts of ``chosen``
    (8-neighbours) that they touch; None where no such pixel is near. The channel of a thin artifact
    such as a frame can fire along two of its sides only; what the members carry is the whole frame.
    (``chosen`` holds at most half the pixels, its threshold being above their median, so random
    places of its size fit beside it.)"""
    from scipy import ndimage

    chosen = interventions.pixels_that_differ(members, rest)
    near = interventions.pixel_region(hotspots.near(region, reach), chosen.shape) & chosen
    if not near.any():
        return None, chosen
    parts, _ = ndimage.label(chosen, structure=np.ones((3, 3), bool))
    return np.isin(parts, np.unique(parts[near])), chosen


def _cluster_region(x, members, inside, grid):
    """The cells a SpRAy cluster looks at more than the rest of its class, as much as half its
    strongest such cell (the same rule as :mod:`keras_cam.audit.hotspots`, step 5)."""
    q = hotspots.shares(x[members])
    if inside.all():
        d = q.mean(axis=0) - 1.0 / q.shape[1]
    else:
        d = q[inside].mean(axis=0) - q[~inside].mean(axis=0)
    d = d.reshape(grid)
    return d >= 0.5 * d.max() if d.max() > 0 else np.ones(grid, bool)


def _verify_cluster(result, cluster, images, region, n_members, n_others, n_random, seed, noise, batch_size):
    """:meth:`Audit.verify`: checks, then :func:`keras_cam.audit.verify.run`."""
    if isinstance(cluster, (int, np.integer)) and not isinstance(cluster, bool):
        if not 0 <= int(cluster) < len(result.clusters):
            raise ValueError(f"`cluster` {int(cluster)} is not a cluster position of this audit "
                             f"(0..{len(result.clusters) - 1}).")
        position = int(cluster)
    elif not isinstance(cluster, Cluster):
        raise TypeError(f"`cluster` must be a Cluster of this audit (an element of `audit.clusters`) or its "
                        f"position there (an int); received {type(cluster).__name__}.")
    else:
        position = next((i for i, c in enumerate(result.clusters) if c is cluster), None)
        if position is None:
            raise ValueError(
                "`cluster` is not one of this audit's clusters (it comes from another audit, or is a copy): "
                "pass an element of `audit.clusters`, or its position there."
            )
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.integer, np.floating)) \
            or not np.isfinite(noise) or noise < 0:
        raise ValueError(f"`noise` must be a finite number >= 0; received {noise!r}.")
    for name, value, least in (("n_members", n_members, 2), ("n_others", n_others, 2), ("n_random", n_random, 1),
                               ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"`{name}` must be an int >= {least}; received {value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int; received {seed!r}.")
    if result.explainer is None:
        raise ValueError("This audit has no explainer attached (it was loaded or built by hand): verify needs "
                         "the model. Run keras_cam.audit(...) again.")
    c = result.clusters[position]
    explainer = result.explainer
    from keras_cam.dataset import weights_fingerprint

    if result.weights is not None and weights_fingerprint(explainer.model) != result.weights:
        raise ValueError(
            f"The weights of model {explainer.model.name!r} changed since this audit (trained further or "
            f"reloaded): its groups and scores describe the old weights. Run keras_cam.audit(...) again, "
            f"then verify its clusters."
        )
    options = (int(n_members), int(n_others), int(n_random), int(seed), float(noise))
    stored = result.verifications.get(position)
    if stored is not None and images is None and region is None and stored.options == options \
            and _verified(stored, c):
        return stored    # the audit's own verification of this group (audit's `verify`), the same numbers
    others_all = np.flatnonzero(result.targets != c.target)
    if len(others_all) == 0:
        raise ValueError(f"Class {c.target} is the only class audited: the transplant needs images of other "
                         f"classes.")
    rng = np.random.default_rng([int(seed), position, 0xA0D])
    members = np.sort(rng.choice(c.indices, size=min(n_members, c.size), replace=False))
    if len(members) < 2:
        raise ValueError(f"Cluster {position} has {c.size} member(s); a verification needs at least 2.")
    others = np.sort(rng.choice(others_all, size=min(n_others, len(others_all)), replace=False))
    rest = None
    if region is None and c.image_wide:    # the rest of the class (the other classes for a whole class)
        pool = np.setdiff1d(np.flatnonzero(result.targets == c.target), c.indices)
        pool = pool if len(pool) >= 2 else others_all
        rest = np.sort(np.random.default_rng([int(seed), position, 0x4E57]).choice(
            pool, size=min(n_members, len(pool)), replace=False))
    source = _VerifyImages(result, images, explainer,
                           np.union1d(np.union1d(members, others), [] if rest is None else rest))
    first = source.get(members[:1])
    channels_first = explainer.graph.data_format == "channels_first"
    size = first.shape[2:4] if channels_first else first.shape[1:3]
    pixels = _pixel_region(region, c, size) if rest is None else np.ones(tuple(int(v) for v in size), bool)

    def to_last(x):
        return np.moveaxis(np.asarray(x, np.float32), 1, -1) if channels_first else np.asarray(x, np.float32)

    def from_last(x):
        return np.moveaxis(x, -1, 1) if channels_first else x

    object_masks = None
    if result.boxes is not None or result.masks is not None:
        h, w = size
        object_masks = np.zeros((len(members), h, w), bool)
        for j, i in enumerate(members):
            if result.boxes is not None:
                y0, x0, y1, x1 = (int(v) for v in result.boxes[i])
                object_masks[j, max(0, y0):y1, max(0, x0):x1] = True
            else:
                object_masks[j] = np.asarray(result.masks[i]) != 0
    scores_of = lambda x: class_scores(explainer, x, batch_size)    # noqa: E731
    # The predictions already computed: the members' explained scores, and the other-class images'
    # class scores where the audit kept them.
    before = None if result.logits is None else result.logits[others]
    extra = {}
    if rest is None:
        removal, transplant, object_drop, (depends, spread), example, shifted, shared = interventions.run(
            scores_of, source.get, to_last, from_last, pixels, c.target,
            members, others, result.scores[members], n_random, seed, object_masks, float(noise), before,
            own=region is None)
        extra = {"stands_out": shared}
    else:    # an image-wide group: intervene on the per-channel means (verify.run_image_wide)
        removal, transplant, offset, (depends, spread), example, offsets, distinct = interventions.run_image_wide(
            scores_of, source.get, to_last, from_last, c.target, members, rest, others,
            result.scores[members], n_random, seed, before)
        object_drop, shifted = None, None
        extra = {"offset": offset, "random_offsets": offsets, "rest": rest, "distinct": distinct}
    example["images"] = tuple(thumbnail(explainer, from_last(im[None])[0]) for im in example["images"])
    found = interventions.Verification(
        cluster=position, target=c.target, region=pixels, members=members, others=others, removal=removal,
        transplant=transplant, object_drop=object_drop, depends=depends,
        verdict=interventions.VERDICT_DEPENDS if depends else interventions.VERDICT_NONE, seed=int(seed),
        spread=spread, example=example, random_regions=shifted,
        matched=bool(rest is None and object_masks is not None),
        level=interventions.level(removal, transplant, spread, extra.get("distinct"), extra.get("stands_out")),
        options=options, **extra)
    result.verifications[position] = found
    return found


def _verified(found, cluster):
    """Whether the verification ``found`` is of ``cluster`` as it is now: its class, members among the
    cluster's, and its pixels (a cluster edited or moved since is verified anew)."""
    if found.target != cluster.target or not np.isin(found.members, cluster.indices).all():
        return False
    if found.offset is not None:
        return bool(cluster.image_wide)
    try:
        return bool(np.array_equal(found.region, _pixel_region(None, cluster, found.region.shape)))
    except ValueError:
        return False


def _pixel_region(region, cluster, size):
    """The ``(H, W)`` pixels to intervene on: the cluster's grid region scaled up, or ``region``."""
    h, w = (int(v) for v in size)
    if region is None:
        if cluster.region is None:
            raise ValueError(f"This cluster (class {cluster.target}, {cluster.size} images) has no region: its class "
                             f"was kept whole (too few images, or all maps alike; see `audit.notes`), so its maps "
                             f"point at no place of their own. Pass `region=` (an (H, W) mask or a box).")
        if cluster.pixels is not None and cluster.pixels.shape == (h, w):
            out = cluster.pixels.copy()
        else:
            out = interventions.pixel_region(np.asarray(cluster.region, bool), (h, w))
    else:
        r = np.asarray(region)
        if r.shape == (4,) and np.issubdtype(r.dtype, np.number):
            y0, x0, y1, x1 = (float(v) for v in r)
            if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w) or not np.all(np.mod(r, 1) == 0):
                raise ValueError(f"`region` box {tuple(r.tolist())} is not inside the {h}x{w} image: give integer "
                                 f"(y0, x0, y1, x1) with 0 <= y0 < y1 <= {h} and 0 <= x0 < x1 <= {w}.")
            out = np.zeros((h, w), bool)
            out[int(y0):int(y1), int(x0):int(x1)] = True
        elif r.ndim == 2:
            if r.shape != (h, w):
                raise ValueError(f"`region` mask has shape {r.shape}; the images are {h}x{w}: give an (H, W) "
                                 f"mask at the images' size, or a box (y0, x0, y1, x1).")
            out = r.astype(bool)
        else:
            raise ValueError(f"`region` must be an (H, W) bool mask or a box (y0, x0, y1, x1); received shape "
                             f"{r.shape}.")
    if not out.any() or out.all():
        raise ValueError(f"The region covers {int(out.sum())} of {h * w} pixels: it must keep some pixels and "
                         f"remove some.")
    return out


class _VerifyImages:
    """The audited images a verification needs, checked against the audit's thumbnails."""

    def __init__(self, result, images, explainer, needed):
        self.result, self.explainer = result, explainer
        self.cache = {}
        if images is None:
            if result.images is None:
                raise ValueError(
                    "This audit read a dataset, so verify needs the images: pass `images=` the images in "
                    "the order the audit read them (an array, or a dataset that yields that order)."
                )
            self.array = result.images
        elif is_tf_dataset(images):
            self.array = None
            wanted, position = set(int(i) for i in needed), 0
            for element in images:
                x = to_host(element[0] if isinstance(element, (tuple, list)) else element)
                x = x[None] if x.ndim == 3 else x
                for j in range(len(x)):
                    if position + j in wanted:
                        self.cache[position + j] = x[j]
                position += len(x)
                if len(self.cache) == len(wanted):
                    break
            if len(self.cache) < len(wanted):
                raise ValueError(f"`images` yielded {position} images; the audit read {len(result.targets)}: "
                                 f"give the images the audit read, in its order.")
        else:
            if isinstance(images, (list, tuple)) or not hasattr(images, "shape"):
                raise TypeError(f"`images` must be an array of the audited images or a tf.data.Dataset; "
                                f"received {type(images).__name__}.")
            if len(images) != len(result.targets):
                raise ValueError(f"`images` holds {len(images)} images; the audit read {len(result.targets)}: "
                                 f"give the images the audit read, in its order.")
            self.array = images
        self.checked = set()

    def get(self, indices):
        out = []
        for i in np.asarray(indices, np.int64):
            image = self.cache[int(i)] if self.array is None else np.asarray(self.array[int(i)])
            if int(i) not in self.checked:
                if not np.array_equal(thumbnail(self.explainer, image), self.result.thumbnails[int(i)]):
                    raise ValueError(
                        f"`images` do not match the audited images: image {int(i)} differs from the one the "
                        f"audit read at that position. Give the images in the order the audit read them "
                        f"(a reshuffling dataset cannot be read in the same order again: pass an array)."
                    )
                self.checked.add(int(i))
            out.append(image)
        return np.stack(out)


class _RetracingFilter(logging.Filter):
    """Drops TensorFlow's retracing warning about :func:`keras_cam.explain_dataset`'s step."""

    def filter(self, record):
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message and "_compiled_step" in message)


@contextlib.contextmanager
def _quiet_dataset_retracing():
    """While an audit reads its maps, TensorFlow's "N out of the last M calls ... triggered
    tf.function retracing" warning about explain_dataset's step is dropped: every audit compiles
    that step for its explainer once, and auditing several models in one process is expected to
    trace it once per model (the step's cache is per explainer, so nothing is retraced in vain)."""
    logger = logging.getLogger("tensorflow")  # TensorFlow's logger (nothing is imported for it)
    quiet = _RetracingFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _read(result, explainer, source, grid, boxes, masks, sigmoid, batch_size, seen, thumbnails,
          grids, targets, probs, correct, outside, pooled=None, kept=None):
    """Keep what the audit needs of one batch of maps: grids, targets, thumbnails, correctness, and
    with ``pooled`` a list, the pooled activations at the target layer (the step's ``features``, or
    :func:`class_features`), and with ``kept`` a list, their class scores."""
    maps = result.maps
    images = source.take(len(maps))
    logits = None
    if pooled is not None:
        features, logits = (result.features if result.features is not None
                            else class_features(explainer, images, batch_size))
        pooled.append(features)
        if kept is not None:
            kept.append(np.asarray(logits, np.float32))
    thumbnails += [thumbnail(explainer, image) for image in images]
    grids.append(spray.to_grid(maps, grid))
    targets.append(result.targets)
    probs.append(result.probabilities)
    if source.has_labels:
        # p(label) > 1/2 under a softmax makes the label the top-1 class; the others are predicted.
        ok = np.asarray(result.probabilities) > 0.5 if not sigmoid else np.zeros(len(maps), bool)
        unsure = np.flatnonzero(~ok)
        if len(unsure):
            top = (logits[unsure] if logits is not None else class_scores(explainer, images[unsure], batch_size)).argmax(axis=1)
            ok[unsure] = top == np.asarray(result.targets)[unsure]
        correct.append(ok)
    if boxes is not None or masks is not None:
        outside.append(_outside_energy(maps, boxes, masks, seen))


def _check_options(n_clusters, max_clusters, n_neighbors, grid, seed):
    def positive_int(name, value, least=1):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"`{name}` must be an int >= {least}; received {value!r}.")

    if not (isinstance(n_clusters, str) and n_clusters == "auto"):
        positive_int("n_clusters", n_clusters)
    positive_int("max_clusters", max_clusters)
    positive_int("n_neighbors", n_neighbors)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int; received {seed!r}.")
    sides = (grid, grid) if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool) else grid
    if not (isinstance(sides, (tuple, list)) and len(sides) == 2):
        raise TypeError(f"`grid` must be an int or a pair (height, width); received {grid!r}.")
    for side in sides:
        positive_int("grid", side, least=2)
    return int(sides[0]), int(sides[1])


def _check_evidence(evidence, n_clusters, explainer):
    if not (isinstance(evidence, str) and evidence in EVIDENCE):
        raise ValueError(f"`evidence` must be one of {', '.join(map(repr, EVIDENCE))}; received {evidence!r}.")
    if evidence != "auto" and n_clusters != "auto":
        raise ValueError(f"`evidence={evidence!r}` chooses between the statistics of n_clusters='auto'; "
                         f"SpRAy (n_clusters={n_clusters!r}) has none. Pass one or the other.")
    if evidence == "what" and not _has_features(explainer):
        raise ValueError(f"`evidence='what'` splits each class on the target layer's activations, which "
                         f"{type(explainer).__name__} does not read; use a gradient explainer such as "
                         f"keras_cam.GradCAM, or evidence='auto' / 'where'.")


def _check_objects(boxes, masks, n, size):
    if boxes is not None:
        b = np.asarray(boxes)
        if b.shape != (n, 4):
            raise ValueError(f"`boxes` must be (n, 4) rows (y0, x0, y1, x1), one per image; received shape "
                             f"{b.shape} for {n} images.")
        if size is not None:
            h, w = (int(v) for v in size)
            bad = np.flatnonzero(~((0 <= b[:, 0]) & (b[:, 0] < b[:, 2]) & (b[:, 2] <= h)
                                   & (0 <= b[:, 1]) & (b[:, 1] < b[:, 3]) & (b[:, 3] <= w)))
            if len(bad):
                raise ValueError(f"`boxes` row {int(bad[0])} {tuple(b[bad[0]].tolist())} is empty or leaves the "
                                 f"{h}x{w} image ({len(bad)} such row(s)): give (y0, x0, y1, x1) in the pixels "
                                 f"the model takes, end exclusive, with 0 <= y0 < y1 <= {h} and "
                                 f"0 <= x0 < x1 <= {w}.")
    if masks is not None:
        m = np.asarray(masks)
        if m.ndim != 3 or len(m) != n or (size is not None and m.shape[1:] != tuple(size)):
            raise ValueError(f"`masks` must be (n, H, W), one per image at the images' size; received shape "
                             f"{m.shape} for {n} images of size {size}.")


def _outside_energy(maps, boxes, masks, offset):
    """Per map ``(H, W)``, the share of its sum outside the object (0 for an empty map)."""
    n, h, w = maps.shape
    if boxes is not None:
        inside = np.zeros((n, h, w), bool)
        for i, (y0, x0, y1, x1) in enumerate(np.asarray(boxes)[offset:offset + n]):
            inside[i, max(0, int(y0)):int(y1), max(0, int(x0)):int(x1)] = True
    else:
        inside = np.asarray(masks)[offset:offset + n] != 0
        if inside.shape[1:] != (h, w):
            raise ValueError(f"`masks` are {inside.shape[1:]}; the images are {(h, w)}: give masks at the "
                             f"images' size.")
    total = maps.reshape(n, -1).sum(axis=1, dtype=np.float64)
    out = np.where(inside, 0.0, maps).reshape(n, -1).sum(axis=1, dtype=np.float64)
    return np.where(total > 0, out / np.maximum(total, 1e-30), 0.0)


def _make_cluster(target, members, x, rated, c, grid):
    vectors = x[members]
    mean = vectors.mean(axis=0, dtype=np.float64)
    closeness = vectors @ mean.astype(np.float32)
    order = members[np.argsort(-closeness, kind="stable")]
    energy = rated["outside_energy"]
    return Cluster(
        target=target, indices=members, mean_map=mean.reshape(grid).astype(np.float32), size=int(len(members)),
        accuracy=None, outside_energy=None if energy is None else float(energy[c]),
        score=float(rated["score"][c]), consistency=float(rated["consistency"][c]),
        distance=float(rated["distance"][c]), separation=float(rated["separation"][c]),
        representative=int(order[0]), examples=order[:EXAMPLES],
    )


class _ScoreStep:
    """The class scores ``(N, C)`` of one explainer's model (its selected output, see
    ``ActivationGraph.scores``), as a callable object compiled once per explainer
    (:mod:`keras_cam.compiled`), so auditing several models in one process traces one step
    per model."""

    def __init__(self, explainer):
        self.owner = weakref.ref(explainer)  # the cache must not keep the explainer alive

    def __call__(self, x):
        graph = self.owner().graph
        return graph.scores(graph.run(graph.to_channels_last(x)))


class _FeatureStep:
    """``Explainer.pooled_features`` of one explainer (the target layer's activations pooled over
    positions ``(N, 2K)``, and the class scores ``(N, C)``), a forward pass of its own, compiled once
    per explainer as :class:`_ScoreStep`: for explainers whose maps' pass cannot give them."""

    def __init__(self, explainer):
        self.owner = weakref.ref(explainer)

    def __call__(self, x):
        explainer = self.owner()
        return explainer.pooled_features(explainer.graph.to_channels_last(x))


_feature_steps = weakref.WeakKeyDictionary()
# The poolings of :func:`class_features`' columns, in order: a channel's mean over positions (a
# feature spread over the image, such as a colour cast or a frame), then its maximum (a small
# feature wherever it sits, such as a moving tag).
POOLINGS = ("mean", "max")


def _has_features(explainer):
    """Whether the explainer has a target layer whose activations :func:`class_features` can pool."""
    from keras_cam.methods.gradient import GradientExplainer

    graph = getattr(explainer, "graph", None)
    return isinstance(explainer, GradientExplainer) and graph is not None and len(getattr(graph, "layers", ())) >= 1


def class_features(explainer, images, batch_size=64):
    """``(pooled, scores)``: the first target layer's activations pooled over positions ``(n, 2K)``
    float32 (columns ``k``: channel ``k``'s mean, ``K + k``: its maximum; see :data:`POOLINGS`) and
    the class scores ``(n, C)`` (as :func:`class_scores`), from one compiled forward pass per batch,
    padded to ``batch_size`` rows."""
    if explainer not in _feature_steps:
        from keras_cam.compiled import Compiled
        _feature_steps[explainer] = Compiled(_FeatureStep(explainer), model=explainer.model)
    step = _feature_steps[explainer]
    images = np.asarray(images, np.float32)
    pooled, scores = [], []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), np.float32)])
        a, s = step(ops.convert_to_tensor(padded))
        pooled.append(to_host(a)[:len(chunk)])
        scores.append(to_host(s)[:len(chunk)])
    return np.concatenate(pooled), np.concatenate(scores)


# The compiled score step per explainer, kept while the explainer lives.
_score_steps = weakref.WeakKeyDictionary()


def class_scores(explainer, images, batch_size=64):
    """The model's class scores ``(n, C)`` float32 (logits where the explainer linearizes the
    head) of ``images`` (in the model's input format), in batches of ``batch_size``: one
    compiled forward pass per explainer, traced once per image shape."""
    if explainer not in _score_steps:
        from keras_cam.compiled import Compiled
        _score_steps[explainer] = Compiled(_ScoreStep(explainer), model=explainer.model)
    step = _score_steps[explainer]
    images = np.asarray(images, np.float32)
    if len(images) == 0:
        return np.zeros((0, 0), np.float32)
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        # Every batch is padded to batch_size rows: one trace per explainer and image shape.
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), np.float32)])
        out.append(to_host(step(ops.convert_to_tensor(padded)))[:len(chunk)])
    return np.concatenate(out)


def thumbnail(explainer, image):
    """An image as displayable ``(h, w, 3)`` uint8, at most :data:`THUMBNAIL` pixels a side."""
    import cv2

    from keras_cam.dataset import displayable
    from keras_cam.viz import as_rgb_uint8

    x = np.asarray(image, np.float32)
    if explainer.graph.data_format == "channels_first":
        x = np.moveaxis(x, 0, -1)
    rgb = as_rgb_uint8(displayable(x[..., :3] if x.shape[-1] >= 3 else x[..., :1]))
    h, w = rgb.shape[:2]
    if max(h, w) > THUMBNAIL:
        s = THUMBNAIL / max(h, w)
        rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return rgb


def is_tf_dataset(obj) -> bool:
    """True for a ``tf.data.Dataset`` (without importing TensorFlow)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(obj, tf.data.Dataset)


class _Iterable:
    """An object whose every ``iter()`` calls ``make()`` afresh (a re-iterable generator)."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return self.make()


def _batches(images, labels, batch_size):
    """Arrays as an iterable of numpy batches, sliced as they are read."""
    def batches():
        for start in range(0, len(images), batch_size):
            x = np.asarray(images[start:start + batch_size])
            yield x if labels is None else (x, labels[start:start + batch_size])
    return _Iterable(batches)


class _Source:
    """The audited images as a dataset for the explain step, and a way to read some of them back."""

    def __init__(self, data, labels, batch_size):
        self.size = None
        if is_tf_dataset(data):
            if labels is not None:
                raise TypeError(
                    "`labels=` goes with an array of images; a tf.data.Dataset carries its labels "
                    "in its elements: pass a dataset of (images, labels)."
                )
            spec = data.element_spec
            self.has_labels = isinstance(spec, (tuple, list)) and len(spec) in (2, 3)
            self.dataset, self.array, self.n = data, None, None
            return
        if isinstance(data, (list, tuple)) or not hasattr(data, "shape"):
            raise TypeError(
                f"`data` must be an array of images (n, H, W, C) or a tf.data.Dataset; received "
                f"{type(data).__name__}."
            )
        array = np.asarray(data)
        if array.ndim == 3:
            raise ValueError(
                f"`data` is a single image of shape {array.shape}; an audit compares the maps of "
                f"many images: pass a batch (n, H, W, C)."
            )
        if array.ndim != 4:
            raise ValueError(f"`data` must be images (n, H, W, C); received shape {array.shape}.")
        self.n, self.array, self.size = len(array), array, array.shape[1:3]
        if self.n < 2:
            raise ValueError(
                f"An audit compares the maps of many images; received {self.n}. Pass a batch of "
                f"images (at least n_neighbors + 1 per class to find clusters)."
            )
        self.has_labels = labels is not None
        if labels is None:
            self.dataset = _batches(array, None, batch_size)
            return
        y = np.asarray(labels)
        if len(y) != self.n or y.ndim not in (1, 2):
            raise ValueError(
                f"`labels` must hold one class (n,) or one-hot row (n, C) per image; received shape "
                f"{y.shape} for {self.n} images."
            )
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
            raise TypeError(f"`labels` must be numbers (class indices or one-hot rows); received dtype {y.dtype}.")
        self.dataset = _batches(array, y, batch_size)

    def recorded(self, keep=256):
        """The images as a dataset that passes each element on as it is read, queueing its images
        for :meth:`take`.

        The data is read once. A short first run (the explain step peeks at the first batch to
        check the images) keeps what it read, at most ``keep`` elements, and the next run replays
        those before it reads on, so the peeked elements are neither read twice nor lost.
        """
        import collections

        self.queue = collections.deque()
        state = {"iterator": None, "prefix": [], "runs": 0, "overflow": False}

        def elements():
            state["runs"] += 1
            if state["iterator"] is None:
                state["iterator"] = iter(self.dataset)
            elif state["overflow"]:
                raise RuntimeError("keras_cam.audit: the explain step read the data twice; please report this.")
            first_run, i = state["runs"] == 1, 0
            while True:
                if i < len(state["prefix"]):
                    element = state["prefix"][i]
                else:
                    try:
                        element = next(state["iterator"])
                    except StopIteration:
                        return
                    element = tuple(to_host(t) for t in element) if isinstance(element, (tuple, list)) \
                        else to_host(element)
                    x = element[0] if self.has_labels else element
                    self.queue.append(x[None] if x.ndim == 3 else x)
                    if first_run:
                        if len(state["prefix"]) < keep:
                            state["prefix"].append(element)
                        else:
                            state["overflow"] = True
                if not first_run and i == len(state["prefix"]) - 1:
                    state["prefix"] = []  # replayed: let it go
                    i = -1
                i += 1
                yield element

        return _Iterable(elements)

    def take(self, count):
        """The next ``count`` images read by :meth:`recorded`, as one array."""
        parts, have = [], 0
        while have < count:
            if not self.queue:
                raise RuntimeError(f"keras_cam.audit: the explain step returned maps for {count - have} "
                                   f"image(s) it was not given; please report this.")
            x = self.queue.popleft()
            if have + len(x) > count:
                self.queue.appendleft(x[count - have:])
                x = x[:count - have]
            parts.append(x)
            have += len(x)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]
