"""Spectral relevance analysis (SpRAy): clustering the maps of one class.

Following Lapuschkin et al. (2019), "Unmasking Clever Hans predictors and
assessing what machines really learn", each map is reduced to a small,
comparable vector and the vectors of one class are clustered spectrally:

1. **Grid.** Each map ``M`` (values in [0, 1]) is area-averaged to a
   ``g x g`` grid and scaled to unit L2 norm, ``x = G(M) / ||G(M)||``; a
   constant map (no location) becomes the uniform vector ``1 / sqrt(g g)``.
   Two maps are then as close as their cosine similarity says:
   ``||x_i - x_j||^2 = 2 (1 - cos(M_i, M_j))``.
2. **Neighbours.** The ``k`` nearest neighbours of each ``x_i`` (Euclidean, exact,
   :class:`sklearn.neighbors.NearestNeighbors` with a k-d tree), found in the leading
   :data:`PCA_DIMS` principal components of the class's vectors when
   ``g g`` is larger (maps are smooth, so those keep nearly all of their
   variance); the affinity is symmetric,
   ``W_ij = 1`` when ``j`` is among ``i``'s neighbours or ``i`` among
   ``j``'s, else 0: a sparse matrix with at most ``2 n k`` entries, never a
   dense ``n x n`` one.
3. **Spectrum.** The normalized Laplacian ``L = I - D^-1/2 W D^-1/2``
   (``D = diag(sum_j W_ij)``) has eigenvalues ``0 = l_0 <= l_1 <= ...``;
   the ``K + 1`` smallest are found by shift-invert Lanczos
   (:func:`scipy.sparse.linalg.eigsh`), per connected component of the
   graph (:func:`spectrum`). A graph made of ``c``
   well-separated groups has ``c`` eigenvalues near 0 and then a jump, so
   the number of clusters is the largest eigengap,
   ``c = argmax_{1 <= c <= K} (l_c - l_{c-1})``.
4. **Clusters.** The ``c`` eigenvectors of the smallest eigenvalues, each
   row scaled to unit length (Ng, Jordan and Weiss), are clustered by
   k-means (:class:`sklearn.cluster.KMeans`, seeded).

:func:`cluster_scores` then rates each cluster (see its docstring).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

# Neighbours are searched in at most this many principal components.
PCA_DIMS = 32
# Connected components up to this many nodes get a dense eigendecomposition.
DENSE_UP_TO = 256
# The shift of the shift-invert eigensolver (just below L's smallest eigenvalue, 0).
SHIFT = -1e-4


def to_grid(maps, grid):
    """Maps ``(n, H, W)`` as unit-norm grid vectors ``(n, gh * gw)`` float32 (step 1 above).

    Args:
        maps: maps with values in [0, 1] (``normalize=True`` maps).
        grid: ``(gh, gw)``, the grid's height and width.

    Returns:
        ``(n, gh * gw)`` rows of unit L2 norm; a constant map becomes the
        uniform row ``1 / sqrt(gh * gw)``.
    """
    maps = np.asarray(maps, np.float32)
    gh, gw = grid
    n, h, w = maps.shape
    if h % gh == 0 and w % gw == 0:  # whole blocks: the area average is a block mean
        small = maps.reshape(n, gh, h // gh, gw, w // gw).mean(axis=(2, 4), dtype=np.float32).reshape(n, -1)
    else:
        shrink = h >= gh and w >= gw
        method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        small = np.stack([cv2.resize(m, (gw, gh), interpolation=method) for m in maps]).reshape(n, -1)
    small -= small.min(axis=1, keepdims=True)  # a no-op for min-max maps; a constant map becomes zeros
    norms = np.linalg.norm(small, axis=1, keepdims=True)
    flat = norms[:, 0] <= 1e-6 * max(1.0, float(norms.max(initial=0.0)))
    small[flat] = 1.0
    norms[flat] = np.sqrt(small.shape[1])
    return small / norms


def _reduced(x, dims, seed):
    """``x`` projected on its ``dims`` leading principal components (as is when it has no more columns)."""
    if x.shape[1] <= dims:
        return x
    mean = x.mean(axis=0, dtype=np.float64)
    cov = np.zeros((x.shape[1], x.shape[1]), np.float64)
    for start in range(0, len(x), 65536):  # chunks keep the float64 copy small
        part = x[start:start + 65536].astype(np.float64) - mean
        cov += part.T @ part
    _, vectors = np.linalg.eigh(cov)
    basis = vectors[:, ::-1][:, :dims].astype(np.float32)
    return (x - mean.astype(np.float32)) @ basis


def affinity(x, n_neighbors, seed=0):
    """The symmetric k-nearest-neighbour affinity ``W`` (sparse CSR, ``W_ij`` in {0, 1}) of rows ``x``."""
    from sklearn.neighbors import NearestNeighbors

    z = _reduced(np.ascontiguousarray(x, np.float32), PCA_DIMS, seed)
    # Exact neighbours (kneighbors_graph's computation); a k-d tree is much faster than
    # brute force on the few dimensions left.
    a = NearestNeighbors(n_neighbors=n_neighbors, algorithm="kd_tree").fit(z).kneighbors_graph(mode="connectivity")
    return a.maximum(a.T).tocsr()


def spectrum(w, n_eigen, seed=0):
    """The ``n_eigen`` smallest eigenvalues of ``L = I - D^-1/2 W D^-1/2`` and their eigenvectors.

    ``L`` is block-diagonal over the graph's connected components, so each
    component is solved on its own (a Krylov solver started from one vector
    finds a repeated eigenvalue once: the ``c`` zero eigenvalues of ``c``
    components would be missed) and the smallest eigenvalues of all
    components are merged; an eigenvector is zero outside its component.
    Components of at most :data:`DENSE_UP_TO` nodes are solved densely
    (:func:`numpy.linalg.eigh`), larger ones by shift-invert Lanczos
    (:func:`scipy.sparse.linalg.eigsh` with ``sigma=SHIFT``: the largest
    eigenvalues of ``(L - SHIFT I)^-1`` through a sparse LU factorization;
    plain Lanczos needs many more iterations, since the small eigenvalues of
    a large graph crowd near 0).

    Returns:
        ``(eigenvalues (n_eigen,) ascending, eigenvectors (n, n_eigen))``.
    """
    from scipy.sparse import diags, identity
    from scipy.sparse.csgraph import connected_components
    from scipy.sparse.linalg import eigsh

    n = w.shape[0]
    degree = np.asarray(w.sum(axis=1)).ravel()
    scale = diags(1.0 / np.sqrt(degree))
    m = (scale @ w @ scale).astype(np.float64).tocsr()
    count, component = connected_components(w, directed=False)
    rng = np.random.default_rng(seed)
    found = []  # (eigenvalue, component, nodes, vector)
    by_component = np.argsort(component, kind="stable")
    groups = np.split(by_component, np.cumsum(np.bincount(component, minlength=count))[:-1])
    for c, nodes in enumerate(groups):
        sub = m[nodes][:, nodes]
        k = min(n_eigen, len(nodes))
        if len(nodes) <= max(DENSE_UP_TO, 2 * n_eigen + 2):
            mu, vectors = np.linalg.eigh(sub.toarray())
            mu, vectors = mu[::-1][:k], vectors[:, ::-1][:, :k]
        else:
            # Shift-invert Lanczos: the eigenvalues of L nearest to SHIFT (just below 0) become
            # the largest of (L - SHIFT I)^-1, well apart even when those of L are crowded near 0.
            lap = (identity(len(nodes), format="csc") - sub).tocsc()
            v0 = rng.uniform(0.5, 1.5, size=len(nodes))
            lam, vectors = eigsh(lap, k=k, sigma=SHIFT, which="LM", v0=v0, tol=1e-10)
            order = np.argsort(lam, kind="stable")
            mu, vectors = 1.0 - lam[order], vectors[:, order]
        found += [(1.0 - float(mu[j]), c, nodes, vectors[:, j]) for j in range(k)]
    found.sort(key=lambda item: (round(item[0], 12), item[1]))
    values = np.array([item[0] for item in found[:n_eigen]])
    out = np.zeros((n, len(values)))
    for j, (_, _, nodes, vector) in enumerate(found[:n_eigen]):
        out[nodes, j] = vector
    return np.clip(values, 0.0, 2.0), out


def eigengap(eigenvalues, max_clusters):
    """The number of clusters ``argmax_{1 <= c <= K} (l_c - l_{c-1})`` (needs ``K + 1`` eigenvalues)."""
    k = min(int(max_clusters), len(eigenvalues) - 1)
    if k < 1:
        return 1
    gaps = np.diff(np.asarray(eigenvalues, np.float64)[:k + 1])
    return int(np.argmax(gaps)) + 1


@dataclasses.dataclass
class ClassClustering:
    """The spectral clustering of one class's grid vectors.

    Attributes:
        labels: ``(n,)`` cluster of each vector, ``0..n_clusters - 1``.
        n_clusters: number of clusters.
        eigenvalues: the smallest eigenvalues of the normalized Laplacian
            (empty when the class was not clustered: too few images, or all
            maps alike).
        affinity: the sparse affinity ``W`` (None when not clustered).
        note: why the class was kept whole, or None.
    """

    labels: np.ndarray
    n_clusters: int
    eigenvalues: np.ndarray
    affinity: object
    note: str | None = None


def cluster(x, n_clusters="auto", max_clusters=8, n_neighbors=10, seed=0):
    """SpRAy on the grid vectors ``x`` ``(n, d)`` of one class (steps 2-4 of the module docstring).

    Args:
        x: unit-norm rows (:func:`to_grid`).
        n_clusters: ``"auto"`` (the largest eigengap) or a number of clusters.
        max_clusters: the most clusters ``"auto"`` may choose.
        n_neighbors: ``k`` of the neighbour graph.
        seed: seeds the eigensolver's start vector and k-means.

    Returns:
        A :class:`ClassClustering`. A class with at most ``n_neighbors``
        images, or whose maps are all the same, is not clustered: it is one
        cluster, with ``note`` saying why. An int ``n_clusters`` larger than
        the class's number of images is reduced to it.
    """
    from threadpoolctl import threadpool_limits

    # One BLAS / OpenMP thread: next to TensorFlow's thread pools, more threads oversubscribe the
    # cores and make these small dense steps several times slower (measured: 0.16 s vs 0.7-5 s
    # for 500 maps), and the big steps (k-d tree, sparse LU) run on one thread anyway.
    with threadpool_limits(limits=1):
        return _cluster(x, n_clusters, max_clusters, n_neighbors, seed)


def _cluster(x, n_clusters, max_clusters, n_neighbors, seed):
    from sklearn.cluster import KMeans

    n = len(x)
    whole = np.zeros(n, np.int64)
    if n <= n_neighbors:
        return ClassClustering(whole, 1, np.zeros(0), None,
                               f"{n} image(s), not more than n_neighbors={n_neighbors}: kept as one cluster")
    if float(np.max(np.ptp(x, axis=0))) <= 1e-6:
        return ClassClustering(whole, 1, np.zeros(0), None, "all maps alike: kept as one cluster")
    w = affinity(x, n_neighbors, seed)
    fixed = n_clusters != "auto"
    top = min(int(n_clusters) if fixed else int(max_clusters), n - 1)
    eigenvalues, vectors = spectrum(w, min(top + 1, n - 1), seed)
    c = min(top, int(n_clusters)) if fixed else eigengap(eigenvalues, top)
    if c <= 1:
        return ClassClustering(whole, 1, eigenvalues, w)
    u = vectors[:, :c]
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    labels = KMeans(n_clusters=c, n_init=4, random_state=seed).fit_predict(u)
    # Number the clusters by their first member, so equal partitions get equal labels.
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(labels.max() + 1, np.int64)
    rank[labels[np.sort(first)]] = np.arange(len(first))
    labels = rank[labels]
    return ClassClustering(labels, int(labels.max()) + 1, eigenvalues, w)


def cluster_scores(x, labels, w, outside=None):
    """The suspicion score of each cluster of one class, and its three factors.

    For cluster ``C`` of the class's unit grid vectors ``x_i``, with ``m_C``
    the mean of its vectors and ``m_R`` the mean of the class's other vectors:

    - *consistency* ``r_C = ||m_C||`` in [0, 1]: 1 when all members' maps are
      the same, small when they point anywhere (a strategy that looks at a
      fixed place, such as a watermark, is consistent; following an object
      that moves is not);
    - *distance* ``d_C = sqrt(1 - cos(m_C, m_R))`` in [0, 1]: how unlike the
      rest of the class the cluster's mean map is (0 for a class of one
      cluster);
    - *separation* ``s_C = 1 - cut(C, R) / vol(C)`` in [0, 1]: the share of
      the members' neighbour links that stay inside the cluster (one minus
      its conductance in ``W``); 1 for a group apart from the rest, lower
      for an arbitrary cut through a continuum (1 for a class of one cluster).

    ``score = r_C * d_C * s_C``, times the cluster's mean outside energy
    ``e_C`` (the share of map energy outside the object) when it is known.
    A score near 1 is a tight, distinct group of maps that looks elsewhere
    than the rest of its class: the cluster to inspect first.

    Args:
        x: ``(n, d)`` unit-norm grid vectors of the class.
        labels: ``(n,)`` cluster of each vector, ``0..c - 1``.
        w: the class's sparse affinity, or None (one cluster).
        outside: ``(n,)`` outside energy per image, or None.

    Returns:
        A dict of ``(c,)`` arrays: ``score``, ``consistency``, ``distance``,
        ``separation``, ``outside_energy`` (None without ``outside``).
    """
    c = int(labels.max()) + 1
    total = x.sum(axis=0, dtype=np.float64)
    consistency, distance, separation = np.zeros(c), np.zeros(c), np.ones(c)
    if w is not None:
        degree = np.asarray(w.sum(axis=1)).ravel()
        onehot = np.zeros((len(labels), c))
        onehot[np.arange(len(labels)), labels] = 1.0
        inside = np.asarray((w @ onehot) * onehot).sum(axis=0)   # links from C that land in C
        volume = onehot.T @ degree
        separation = inside / np.maximum(volume, 1e-12)
    for k in range(c):
        members = labels == k
        part = x[members].sum(axis=0, dtype=np.float64)
        mean = part / members.sum()
        consistency[k] = np.linalg.norm(mean)
        rest = total - part
        if members.all() or np.linalg.norm(rest) == 0:
            continue
        cos = float(part @ rest) / (np.linalg.norm(part) * np.linalg.norm(rest))
        distance[k] = np.sqrt(max(0.0, 1.0 - cos))
    score = consistency * distance * separation
    energy = None
    if outside is not None:
        energy = np.array([float(np.mean(outside[labels == k])) for k in range(c)])
        score = score * energy
    return {"score": score, "consistency": consistency, "distance": distance,
            "separation": separation, "outside_energy": energy}
