"""A cluster of the dataset audit summarized by its top concepts (:meth:`keras_cam.Audit.concepts`).

Deep Feature Factorization (:mod:`keras_cam.concepts.dff`) runs over the
cluster's members (a seeded sample of at most ``n_members``) at the audit's
layer; the concepts are ranked by their mean share over the members
(``Concepts.shares``), so the first concept is what the cluster's images hold
most at that layer, and its class scores say which class it speaks for.
"""

from __future__ import annotations

import dataclasses
import html

import numpy as np

from keras_cam.concepts.nmf import check_count, check_seed


@dataclasses.dataclass
class ClusterConcepts:
    """The top concepts of one audit cluster.

    Attributes:
        cluster: the cluster's position in :attr:`keras_cam.Audit.clusters`.
        members: ``(m,)`` the members factorized (positions in the audit's input order).
        concepts: the :class:`~keras_cam.concepts.dff.Concepts` of the members
            (maps ``(m, k, H, W)``, one row per member of ``members``).
        ranking: ``(k,)`` the concepts by mean share over the members, largest first.
        mean_shares: ``(k,)`` each concept's mean share (in concept order).
    """

    cluster: int
    members: np.ndarray
    concepts: object
    ranking: np.ndarray
    mean_shares: np.ndarray

    def top(self, n=3):
        """``[(concept, mean share, top class or None), ...]`` of the ``n`` leading concepts."""
        n = check_count("n", n)
        scores = self.concepts.class_scores
        return [(int(j), float(self.mean_shares[j]), None if scores is None else int(np.argmax(scores[j])))
                for j in self.ranking[:n]]


def cluster_position(result, cluster):
    """The position of ``cluster`` (a :class:`~keras_cam.Cluster` of ``result`` or its position)."""
    if isinstance(cluster, (int, np.integer)) and not isinstance(cluster, bool):
        if not 0 <= int(cluster) < len(result.clusters):
            raise ValueError(f"`cluster` {int(cluster)} is not a cluster position of this audit "
                             f"(0..{len(result.clusters) - 1}).")
        return int(cluster)
    position = next((i for i, c in enumerate(result.clusters) if c is cluster), None)
    if position is None:
        raise ValueError("`cluster` is not one of this audit's clusters (it comes from another audit, or is a copy): "
                         "pass an element of `audit.clusters`, or its position there.")
    return position


def cluster_concepts(result, position, get_images, k=5, n_members=64, seed=0, batch_size=64, iterations=200):
    """:meth:`keras_cam.Audit.concepts` once the cluster and the images are resolved.

    ``get_images(indices)`` returns the audited images at ``indices`` as the model takes them.
    """
    from keras_cam.concepts.dff import DeepFeatureFactorization

    k = check_count("k", k)
    n_members = check_count("n_members", n_members)
    seed = check_seed(seed)
    if result.explainer is None:
        raise ValueError("This audit has no explainer attached (it was loaded or built by hand): its concepts need "
                         "the model. Run keras_cam.audit(...) again.")
    c = result.clusters[position]
    rng = np.random.default_rng([seed, position, 0xC0C])
    members = np.sort(rng.choice(c.indices, size=min(n_members, c.size), replace=False))
    graph = result.explainer.graph
    dff = DeepFeatureFactorization(result.explainer.model, graph.layers[0], k=k, seed=seed, iterations=iterations,
                                   output=graph.output, linearize=graph.linearize, batch_size=batch_size,
                                   data_format=graph.data_format, reshape=graph.reshape)
    concepts = dff(get_images(members))
    mean = concepts.shares.mean(axis=0)
    summary = ClusterConcepts(cluster=position, members=members, concepts=concepts,
                              ranking=np.argsort(-mean, kind="stable"), mean_shares=mean)
    result.concept_summaries[position] = summary
    return summary


def summary_html(result, summary, class_names=None, n=3):
    """The report's block for a cluster's concepts: per leading concept its share, top class, and the
    member that holds most of it with the concept's map over it."""
    from keras_cam.files import png_data_uri
    from keras_cam.concepts.figures import colours
    from keras_cam.viz import overlay

    esc = html.escape
    palette = (255 * colours(summary.concepts.k)).astype(int)
    figures = []
    for j, share, top in summary.top(n):
        best = int(np.argmax(summary.concepts.shares[:, j]))
        index = int(summary.members[best])
        heat = summary.concepts.maps[best, j]
        peak = float(heat.max())
        picture = overlay(result.thumbnails[index], heat / peak if peak > 0 else heat, alpha=0.5)
        name = "n/a" if top is None else str(top)
        if top is not None and class_names is not None:
            try:
                name = f"{top} ({class_names[top]})"
            except (IndexError, KeyError, TypeError):
                pass
        r, g, b = palette[j]
        caption = f"concept {j}: {100 * share:.1f}% of the members' activation; speaks for class {name}; #{index}"
        figures.append(f'<figure><img class="heat" src="{png_data_uri(picture)}" alt="{esc(caption)}" '
                       f'style="border: 3px solid rgb({r},{g},{b})"><figcaption>{esc(caption)}</figcaption></figure>')
    return (f'<div class="concepts"><h4>Top concepts (DFF at {esc(summary.concepts.layer)}, '
            f"{len(summary.members)} members, k = {summary.concepts.k})</h4>"
            f'<div class="row">{"".join(figures)}</div></div>')
