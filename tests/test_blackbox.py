"""Occlusion, RISE, Sobol and HSIC attribution against computations written here.

The references use the model only as a black box (``model(x)`` on inputs
masked here, with numpy) and build everything else again in plain Python:
the occlusion patches and their average by explicit loops; RISE's masks from
the counter-based draws computed in numpy (``keras_cam.random.uniform_numpy``),
a binary grid resized by scikit-image (its bilinear resize, edges clamped)
and cropped at the shift; Sobol's and HSIC's masks from their design tables
laid on the cells by loops, the Jansen estimator and HSIC's trace formula
written out. The Jansen estimator is also held to the Ishigami function's
analytic total indices, and both grid methods to models whose score depends
on one known cell. They share no code with ``keras_cam.methods.blackbox``,
which streams ``(input, mask)`` pairs through the model inside one compiled
function and builds its masks on the device.
"""

import itertools
import math

import numpy as np
import pytest

import keras_cam as kc
from keras_cam._compat import LEGACY, keras, to_host
from keras_cam.methods import create
from keras_cam.methods.blackbox import (RISE, HSICAttribution, Occlusion, SobolAttribution, hsic_designs,
                                        hsic_indices, jansen_total_indices, sobol_designs)
from keras_cam.random import uniform_numpy

CLASSES = 3
SHAPES = {1: (16, 2), 2: (10, 12, 3), 3: (4, 6, 6, 1)}
CONV = {1: "Conv1D", 2: "Conv2D", 3: "Conv3D"}


def build(shape, seed=1, softmax=False):
    """conv (ReLU) -> flatten -> Dense: every position matters in its own way."""
    keras.utils.set_random_seed(seed)
    rank = len(shape) - 1
    inp = keras.Input(shape)
    x = getattr(keras.layers, CONV[rank])(3, 3, padding="same", activation="relu", name="c1",
                                          bias_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=seed))(inp)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(CLASSES, activation="softmax" if softmax else None, name="head")(x)
    model = keras.Model(inp, out)
    w, b = model.get_layer("head").get_weights()
    rng = np.random.default_rng(seed)
    model.get_layer("head").set_weights([rng.normal(0, 1, w.shape).astype("float32"), b])
    return model


def images(shape, n=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def predict(model, x):
    """The model's outputs on a numpy batch, float64 (the black box itself). Run in padded
    chunks of 64 rows, one input shape per model input size (JAX compiles each shape it sees)."""
    x = np.asarray(x, np.float32)
    n = len(x)
    x = np.concatenate([x, np.zeros((-n % 64,) + x.shape[1:], np.float32)])
    out = [to_host(model(x[i:i + 64], training=False)) for i in range(0, len(x), 64)]
    return np.concatenate(out)[:n].astype(np.float64)


def top1(model, x):
    return predict(model, x).argmax(axis=1)


# ------------------------------------------------------------------ Occlusion

def ref_occlusion(model, x, patch, stride, fill, cls):
    """Per input: each patch (anchors 0, s, 2s, ... while it fits, then n - p) set to ``fill``;
    the map is the mean over the patches covering a position of S(x) - S(occluded)."""
    size = x.shape[1:-1]
    starts = []
    for n, p, s in zip(size, patch, stride):
        a = [i for i in range(0, n) if i % s == 0 and i + p <= n]
        if a[-1] != n - p:
            a.append(n - p)
        starts.append(a)
    out = []
    for img, c in zip(x, cls):
        base = predict(model, img[None])[0, c]
        total, count = np.zeros(size), np.zeros(size)
        copies, regions = [], []
        for corner in itertools.product(*starts):
            region = tuple(slice(a, a + p) for a, p in zip(corner, patch))
            occluded = img.copy()
            occluded[region] = fill
            copies.append(occluded)
            regions.append(region)
        scores = predict(model, np.stack(copies))[:, c]
        for region, s in zip(regions, scores):
            total[region] += base - s
            count[region] += 1
        assert count.min() >= 1
        out.append(total / count)
    return np.stack(out)


def assert_close_to_max(actual, expected, rtol=2e-5):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=rtol * max(np.abs(want).max(), 1e-12))


@pytest.mark.parametrize("rank,patch,stride,fill,seed", [
    (1, 5, 4, 0.5, 2),             # 16: 0, 4, 8 then 11
    (2, (4, 3), (2, 3), -0.3, 4),  # overlapping along H; 10 x 12: an extra anchor along H
    (2, 10, 1, 0.0, 5),            # the whole height, a column at a time
    (3, (2, 3, 3), (1, 2, 3), 0.2, 6),
])
def test_occlusion_equals_loop(rank, patch, stride, fill, seed):
    shape = SHAPES[rank]
    model = build(shape, seed=seed)
    x = images(shape, 3, seed)
    # One case streams in passes of 7 copies; the others run every copy of a call in one pass
    # (the streaming loop is held to one pass by the batch == single tests below).
    occ = Occlusion(model, patch_size=patch, stride=stride, fill=fill, batch_size=7 if rank == 2 else 512)
    got = occ(x, normalize=False)
    size = shape[:-1]
    patch_, stride_ = (patch,) * rank if isinstance(patch, int) else patch, (stride,) * rank if isinstance(
        stride, int) else stride
    want = ref_occlusion(model, x, patch_, stride_, fill, top1(model, x))
    assert_close_to_max(got, want)
    assert got.shape == (3,) + size
    # (each extra check compiles the call again, so each case makes one)
    if rank == 1:  # normalize=True is the min-max scaled map
        norm = occ(x)
        np.testing.assert_allclose(norm, np.stack([(w - w.min()) / (w.max() - w.min()) for w in want]), atol=1e-4)
    elif rank == 2:  # a single input is the batch's row
        np.testing.assert_allclose(occ(x[1], normalize=False), got[1], atol=1e-5 * np.abs(got[1]).max())


def test_occlusion_fill_per_channel_probability_score_and_classes():
    """One fill value per channel; a softmax model scored on its probability (linearize=False)."""
    shape = SHAPES[2]
    model = build(shape, seed=7, softmax=True)
    x = images(shape, 2, 7)
    fill = np.array([0.1, -0.2, 0.3], np.float32)
    occ = Occlusion(model, patch_size=(5, 4), stride=(5, 4), fill=fill, linearize=False)
    want = ref_occlusion(model, x, (5, 4), (5, 4), fill, [2, 0])
    assert_close_to_max(occ(x, targets=[2, 0], normalize=False), want)


# ------------------------------------------------------------------ RISE

def ref_rise(model, x, masks, cells, p, seed, cls):
    """(1 / (masks p)) sum_i S(x M_i) M_i with M_i: the binary grid of cells + 1 cells per axis
    (uniform_numpy(seed, [i]) < p), resized bilinearly by scikit-image to (cells + 1) C and
    cropped at d = floor(u C) per axis."""
    from skimage.transform import resize

    size = x.shape[1:-1]
    rank = len(size)
    big = tuple(g + 1 for g in cells)
    m = math.prod(big)
    c = [math.ceil(n / g) for n, g in zip(size, cells)]
    all_masks = []
    for i in range(masks):
        u = uniform_numpy(seed, [i], (m + rank,))[0].astype(np.float32)
        binary = (u[:m] < np.float32(p)).reshape(big).astype(np.float64)
        up = resize(binary, [b * cc for b, cc in zip(big, c)], order=1, mode="edge", anti_aliasing=False)
        shift = [min(int(np.floor(u[m + a] * c[a])), c[a] - 1) for a in range(rank)]
        all_masks.append(up[tuple(slice(d, d + n) for d, n in zip(shift, size))])
    all_masks = np.stack(all_masks)
    out = []
    for img, k in zip(x, cls):
        s = predict(model, img[None] * all_masks[..., None].astype(np.float32))[:, k]
        out.append(np.tensordot(s, all_masks, axes=1) / (masks * p))
    return np.stack(out)


@pytest.mark.parametrize("rank,masks,cells,p,seed", [
    (1, 40, 4, 0.5, 0),
    (2, 33, (2, 5), 0.3, 7),
    (3, 20, (2, 3, 2), 0.6, 3),
])
def test_rise_equals_loop(rank, masks, cells, p, seed):
    shape = SHAPES[rank]
    model = build(shape, seed=seed + 10)
    x = images(shape, 2, seed)
    rise = RISE(model, masks=masks, grid=cells, p=p, seed=seed, batch_size=16 if rank == 2 else 512)
    got = rise(x, normalize=False)
    cells_ = (cells,) * rank if isinstance(cells, int) else cells
    want = ref_rise(model, x, masks, cells_, p, seed, top1(model, x))
    assert_close_to_max(got, want, rtol=1e-4)


# ------------------------------------------------------------------ Sobol

def ishigami(u, a=7.0, b=0.1):
    x = (2 * u - 1) * np.pi
    return np.sin(x[:, 0]) + a * np.sin(x[:, 1]) ** 2 + b * x[:, 2] ** 4 * np.sin(x[:, 0])


def ishigami_total(a=7.0, b=0.1):
    """The analytic total indices of the Ishigami function (Homma and Saltelli 1996)."""
    v1 = 0.5 * (1 + b * np.pi ** 4 / 5) ** 2
    v2 = a ** 2 / 8
    v13 = b ** 2 * np.pi ** 8 * (1 / 18 - 1 / 50)
    v = v1 + v2 + v13
    return np.array([(v1 + v13) / v, v2 / v, v13 / v])


@pytest.mark.parametrize("seed", [0, 1])
def test_jansen_estimator_on_ishigami(seed):
    n = 2 ** 12
    table = sobol_designs(3, n, seed=seed)
    f = ishigami(table.astype(np.float64))
    st = to_host(jansen_total_indices(f[:n], f[n:2 * n], f[2 * n:].reshape(3, n)))
    np.testing.assert_allclose(st, ishigami_total(), atol=0.02)
    # (0.5576, 0.4424, 0.2437): the estimator separates the interaction-only factor x3
    assert ishigami_total()[2] == pytest.approx(0.2437, abs=1e-3)


def test_sobol_design_structure():
    """[A; B; C_1..C_d], C_i = A with column i from B, A and B the halves of one scrambled Sobol draw."""
    from scipy.stats import qmc

    d, n = 5, 16
    table = sobol_designs(d, n, seed=3)
    assert table.shape == (n * (d + 2), d)
    a, b = table[:n], table[n:2 * n]
    for i in range(d):
        c = table[(2 + i) * n:(3 + i) * n]
        np.testing.assert_array_equal(np.delete(c, i, axis=1), np.delete(a, i, axis=1))
        np.testing.assert_array_equal(c[:, i], b[:, i])
    points = np.concatenate([a, b], axis=1).astype(np.float64)
    assert 0 <= points.min() and points.max() < 1
    # a low-discrepancy sample: far more uniform than n random points in 2d dimensions
    assert qmc.discrepancy(points) < 0.5 * qmc.discrepancy(np.random.default_rng(0).random(points.shape))
    np.testing.assert_array_equal(sobol_designs(d, n, seed=3), table)
    assert not np.array_equal(sobol_designs(d, n, seed=4), table)


def cells_of(size, cells):
    """Cell of each position, by loops: position t of an axis of n is in cell floor((t + 0.5) g / n)."""
    index = np.zeros(size, np.int64)
    for pos in itertools.product(*[range(n) for n in size]):
        flat = 0
        for t, n, g in zip(pos, size, cells):
            flat = flat * g + min(int((t + 0.5) * g / n), g - 1)
        index[pos] = flat
    return index


def design_scores(model, x, table, cells, cls):
    """S(x * M(row)) for every row of a design table, masks laid on the cells by loops."""
    index = cells_of(x.shape[1:-1], cells)
    masks = table[:, index]                                             # (R, *S)
    return np.stack([predict(model, img[None] * masks[..., None])[:, k] for img, k in zip(x, cls)])


def ref_sobol(model, x, cells, designs, seed, cls):
    d = math.prod(cells)
    y = design_scores(model, x, sobol_designs(d, designs, seed), cells, cls)
    n = designs
    out = []
    for row in y:
        fa, fb = row[:n], row[n:2 * n]
        var = np.var(np.concatenate([fa, fb]))
        st = [sum((fa[j] - row[(2 + i) * n + j]) ** 2 for j in range(n)) / (2 * n) / var for i in range(d)]
        out.append(np.reshape(st, cells))
    return np.stack(out)


@pytest.mark.parametrize("rank,cells,designs,seed", [(1, 4, 8, 0), (2, (2, 3), 8, 1), (3, (1, 2, 2), 4, 2)])
def test_sobol_equals_loop(rank, cells, designs, seed):
    shape = SHAPES[rank]
    model = build(shape, seed=seed + 20)
    x = images(shape, 2, seed)
    sobol = SobolAttribution(model, grid=cells, designs=designs, seed=seed, batch_size=16 if rank == 1 else 512)
    got = sobol(x, normalize=False, upsample=False)
    cells_ = (cells,) * rank if isinstance(cells, int) else cells
    assert_close_to_max(got, ref_sobol(model, x, cells_, designs, seed, top1(model, x)), rtol=2e-4)
    # upsampled: the grid map resized bilinearly to the input (as every map at a coarser resolution)
    assert sobol(x, normalize=False).shape == x.shape[:-1]


def one_cell_model(shape, cells, cell, seed=0):
    """Flatten -> Dense(2), class 0's weights nonzero only on the positions of grid cell ``cell``
    (each 1 / its size), class 1 the negative: a score that depends on that cell only."""
    keras.utils.set_random_seed(seed)
    inside = (cells_of(shape[:-1], cells) == cell)
    w = np.zeros(shape, np.float32)
    w[inside] = 1.0 / (inside.sum() * shape[-1])
    model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.layers[-1].set_weights([np.stack([w.reshape(-1), -w.reshape(-1)], axis=1), np.zeros(2, np.float32)])
    return model


@pytest.mark.parametrize("rank,cells,cell,seed", [(2, (3, 3), 4, 5), (3, (2, 2, 2), 5, 6)])
def test_sobol_on_a_score_of_one_cell(rank, cells, cell, seed):
    """S = c u_cell (the cell's mask value): ST = 0 exactly for every other cell; for that one,
    Jansen's value on the design's own column, mean((a - b)^2) / 2 / var([a, b]) (1 in expectation)."""
    shape = SHAPES[rank]
    model = one_cell_model(shape, cells, cell)
    x = np.ones((1,) + shape, np.float32)
    st = SobolAttribution(model, grid=cells, designs=32, seed=seed)(x, targets=0, normalize=False, upsample=False)
    flat = st.reshape(-1)
    table = sobol_designs(math.prod(cells), 32, seed).astype(np.float64)
    a, b = table[:32, cell], table[32:64, cell]
    assert flat[cell] == pytest.approx(np.mean((a - b) ** 2) / 2 / np.var(np.concatenate([a, b])), rel=1e-4)
    assert flat[cell] == pytest.approx(1.0, abs=0.25)
    np.testing.assert_allclose(np.delete(flat, cell), 0.0, atol=1e-6)


# ------------------------------------------------------------------ HSIC

def ref_hsic(x_design, y):
    """tr(K_i H L H) / (n - 1)^2 with explicit n x n matrices: K_i the Dirac kernel on cell i's
    0/1 column, L the Gaussian kernel of bandwidth the median pairwise |y_j - y_l|."""
    n, d = x_design.shape
    h = np.eye(n) - np.ones((n, n)) / n
    dist = np.abs(y[:, None] - y[None, :])
    sigma = np.median(dist[np.triu_indices(n, 1)])
    if sigma == 0:
        sigma = dist[np.triu_indices(n, 1)].mean()
    ell = np.exp(-dist ** 2 / (2 * sigma ** 2))
    out = []
    for i in range(d):
        col = x_design[:, i]
        k = (col[:, None] == col[None, :]).astype(np.float64)
        out.append(np.trace(k @ h @ ell @ h) / (n - 1) ** 2)
    return np.array(out)


@pytest.mark.parametrize("rank,cells,designs,seed", [(1, 4, 24, 0), (2, (2, 3), 32, 1), (3, (1, 2, 2), 16, 2)])
def test_hsic_equals_loop(rank, cells, designs, seed):
    shape = SHAPES[rank]
    model = build(shape, seed=seed + 30)
    x = images(shape, 2, seed)
    hsic = HSICAttribution(model, grid=cells, designs=designs, seed=seed, batch_size=16 if rank == 3 else 512)
    got = hsic(x, normalize=False, upsample=False)
    cells_ = (cells,) * rank if isinstance(cells, int) else cells
    table = hsic_designs(math.prod(cells_), designs, seed)
    y = design_scores(model, x, table, cells_, top1(model, x))
    want = np.stack([ref_hsic(table.astype(np.float64), row).reshape(cells_) for row in y])
    assert_close_to_max(got, want, rtol=1e-4)


def test_hsic_design_is_a_balanced_latin_hypercube():
    table = hsic_designs(7, 40, seed=2)
    assert set(np.unique(table)) == {0.0, 1.0}
    np.testing.assert_array_equal(table.sum(axis=0), 20)            # every cell kept in half the designs
    assert not np.array_equal(hsic_designs(7, 40, seed=3), table)


@pytest.mark.parametrize("designs", [16, 50])
def test_hsic_on_a_score_of_one_cell(designs):
    """S = const * x_cell (0/1): the median distance is the constant, and with half the designs
    keeping the cell HSIC = (1 - e^{-1/2}) n^2 / (4 (n - 1)^2) exactly."""
    shape, cells, cell = SHAPES[2], (2, 3), 4
    model = one_cell_model(shape, cells, cell, seed=1)
    x = np.ones((1,) + shape, np.float32)
    got = HSICAttribution(model, grid=cells, designs=designs, seed=1)(x, targets=0, normalize=False,
                                                                      upsample=False).reshape(-1)
    n = designs
    assert got[cell] == pytest.approx((1 - np.exp(-0.5)) * n * n / (4 * (n - 1) ** 2), rel=1e-5)
    assert got.argmax() == cell and np.delete(got, cell).max() < 0.5 * got[cell]


def test_hsic_indices_of_constant_outputs_are_zero_and_of_a_copy_are_largest():
    table = hsic_designs(4, 20, seed=0)
    y = np.stack([np.full(20, 3.0), table[:, 2] * 2.0 + 0.1 * table[:, 0]])
    got = to_host(hsic_indices(table, y))
    np.testing.assert_allclose(got[0], 0.0, atol=1e-7)
    assert_close_to_max(got[1:], ref_hsic(table.astype(np.float64), y[1])[None], rtol=1e-5)
    assert got[1].argmax() == 2


# ------------------------------------------------------------------ invariances

RANDOMIZED = {
    "rise": lambda m, seed, bs: RISE(m, masks=24, grid=3, seed=seed, batch_size=bs),
    "sobol": lambda m, seed, bs: SobolAttribution(m, grid=2, designs=4, seed=seed, batch_size=bs),
    "hsic": lambda m, seed, bs: HSICAttribution(m, grid=(2, 3), designs=16, seed=seed, batch_size=bs),
}


@pytest.mark.parametrize("name", sorted(RANDOMIZED))
def test_batch_equals_single_and_seeds(name):
    shape = SHAPES[2]
    model = build(shape, seed=40)
    x = images(shape, 2, 40)
    make = RANDOMIZED[name]
    small = make(model, 3, 5)                                             # passes of 5 copies
    batch = small(x, targets=[0, 2], normalize=False)
    np.testing.assert_allclose(small(x[1], targets=2, normalize=False), batch[1], rtol=0,
                               atol=1e-6 * np.abs(batch[1]).max())
    # another explainer, the same seed, every copy in one pass: the same maps
    np.testing.assert_allclose(make(model, 3, 64)(x, targets=[0, 2], normalize=False), batch, rtol=0,
                               atol=1e-6 * np.abs(batch).max())
    changed = make(model, 4, 64)(x, targets=[0, 2], normalize=False)
    assert np.abs(changed - batch).max() > 1e-3 * np.abs(batch).max()


@pytest.mark.parametrize("name,kwargs", [("occlusion", {"patch_size": 4, "stride": 2}),
                                         ("rise", {"masks": 16, "grid": 3}),
                                         ("sobolattribution", {"grid": 2, "designs": 4}),
                                         ("hsicattribution", {"grid": 2, "designs": 12})])
def test_registry_and_explain_dataset(name, kwargs):
    shape = SHAPES[2]
    model = build(shape, seed=41)
    x = images(shape, 4, 41)
    y = np.array([0, 1, 2, 1])
    cam = create(name, model, **kwargs)
    assert not type(cam).uses_layer and cam.verbose == 0
    want = cam(x, targets=y)
    results = list(kc.explain_dataset(cam, [(x[:2], y[:2]), (x[2:], y[2:])], verbose=0))
    got = np.concatenate([r.maps for r in results])
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([r.targets for r in results]), y)
    assert 0 <= want.min() and want.max() <= 1 and want.shape == x.shape[:-1]


def test_callable_target_and_model_unchanged():
    shape = SHAPES[1]
    model = build(shape, seed=42)
    x = images(shape, 2, 42)
    before = [w.copy() for w in model.get_weights()]
    occ = Occlusion(model, patch_size=3, stride=3)
    got = occ(x, targets=lambda out: out[:, 0] - out[:, 1], normalize=False)
    base = predict(model, x)
    size = shape[0]
    want = np.zeros((2, size))
    for n in range(2):
        for a in [0, 3, 6, 9, 12, 13]:
            xo = x[n].copy()
            xo[a:a + 3] = 0
            o = predict(model, xo[None])[0]
            want[n, a:a + 3] += (base[n, 0] - base[n, 1]) - (o[0] - o[1])
    count = np.zeros(size)
    for a in [0, 3, 6, 9, 12, 13]:
        count[a:a + 3] += 1
    assert_close_to_max(got, want / count)
    for w0, w1 in zip(before, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)


# ------------------------------------------------------------------ bad input

def free_size_model():
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(2, 3, padding="same")(inp)
    return keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize("make,match", [
    (lambda m: Occlusion(m, patch_size=13), r"`patch_size` \(13, 13\) is larger than the input.*\(10, 12\).*at most"),
    (lambda m: Occlusion(m, patch_size=(11, 2)), r"`patch_size` \(11, 2\) is larger"),
    (lambda m: Occlusion(m, patch_size=0), r"`patch_size` must be a positive int.*received 0"),
    (lambda m: Occlusion(m, patch_size=(3,)), r"2 positive ints, one per spatial axis.*received \(3,\)"),
    (lambda m: Occlusion(m, stride=-1), r"`stride` must be a positive int.*received -1"),
    (lambda m: Occlusion(m, patch_size=3, stride=(3, 4)), r"`stride` \(3, 4\) is larger than `patch_size`.*at most"),
    (lambda m: Occlusion(m, patch_size=2.5), r"received 2.5"),
    (lambda m: Occlusion(m, fill=float("nan")), r"`fill`.*finite.*received nan"),
    (lambda m: Occlusion(m, fill="mean"), r"`fill`.*received 'mean'"),
    (lambda m: Occlusion(m, layer="c1"), r"no target layer.*layer='c1'"),
    (lambda m: Occlusion(m, aug_smooth=True), r"`aug_smooth` does not apply.*stride"),
    (lambda m: Occlusion(m, eigen_smooth=True), r"eigen_smooth"),
    (lambda m: RISE(m, masks=0), r"`masks` must be a positive int.*received 0"),
    (lambda m: RISE(m, masks=-5), r"received -5"),
    (lambda m: RISE(m, masks=True), r"`masks` must be a positive int"),
    (lambda m: RISE(m, p=0), r"`p` .* strictly between 0 and 1.*received 0"),
    (lambda m: RISE(m, p=1.0), r"received 1.0"),
    (lambda m: RISE(m, p=1.5), r"received 1.5"),
    (lambda m: RISE(m, p="half"), r"received 'half'"),
    (lambda m: RISE(m, grid=11), r"`grid` \(11, 11\) is larger than the input.*smaller grid"),
    (lambda m: RISE(m, seed=1.5), r"`seed` must be an int"),
    (lambda m: SobolAttribution(m, designs=0), r"`designs` must be a positive int.*received 0"),
    (lambda m: SobolAttribution(m, grid=(2, 13)), r"`grid` \(2, 13\) is larger"),
    (lambda m: HSICAttribution(m, designs=1), r"`designs` must be at least 2.*received 1"),
    (lambda m: HSICAttribution(m, grid=0), r"`grid` must be a positive int.*received 0"),
    (lambda m: SobolAttribution(m, batch_size=0), r"`batch_size` must be a positive int"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make(build(SHAPES[2], seed=43))


def test_bad_sizes_found_at_call_time_for_a_free_size_model():
    model = free_size_model()
    small = images((6, 7, 3), 1, 47)
    occ = Occlusion(model, patch_size=8)               # the size is unknown until the call
    with pytest.raises(ValueError, match=r"`patch_size` \(8, 8\) is larger than the input.*\(6, 7\)"):
        occ(small)
    with pytest.raises(ValueError, match=r"`grid` \(9, 9\) is larger than the input"):
        RISE(model, grid=9, masks=4)(small)
    with pytest.raises(ValueError, match=r"`fill` has 2 values but the input has 3 channels"):
        Occlusion(model, patch_size=2, fill=[0.0, 1.0])(small)
    # a size that fits works, and the defaults on any size: an eighth of each axis for the patch,
    # 7 (RISE) or 8 (Sobol, HSIC) cells per axis but at most the axis's size
    assert Occlusion(model)(small, normalize=False).shape == (1, 6, 7)
    assert RISE(model, masks=4)(small).shape == (1, 6, 7)
    assert HSICAttribution(model, designs=4)(small, upsample=False).shape == (1, 6, 7)
    volume = SobolAttribution(build(SHAPES[3], seed=46), designs=2)
    assert volume(images(SHAPES[3], 1), upsample=False).shape == (1, 4, 4, 4)


def test_hostile_inputs():
    shape = SHAPES[2]
    model = build(shape, seed=44)
    occ = Occlusion(model, patch_size=5, stride=5)
    with pytest.raises(ValueError, match="empty batch"):
        occ(np.zeros((0,) + shape, np.float32))
    with pytest.raises(TypeError, match="string"):
        occ("cat.png")
    # a patch of the whole input: one patch, one drop, a constant map (zeros when normalized)
    whole = Occlusion(model, patch_size=shape[:-1])
    x = images(shape, 1, 44)
    drop = predict(model, x)[0].max() - predict(model, np.zeros_like(x))[0, top1(model, x)[0]]
    with pytest.warns(UserWarning, match="all zeros: every part of the input moved the explained score by the "
                      "same amount") as caught:
        assert np.all(whole(x) == 0)
    assert not any("gradient" in str(w.message) or "layer" in str(w.message) for w in caught)
    np.testing.assert_allclose(whole(x, normalize=False), np.full((1,) + shape[:-1], drop), rtol=1e-5)
    # integer images are read as floats; one image without a batch axis gives one map
    xi = np.random.default_rng(0).integers(0, 3, shape)
    np.testing.assert_allclose(occ(xi), occ(xi.astype(np.float32)[None])[0], atol=1e-6)


# ------------------------------------------------------------------ peer

@pytest.mark.tensorflow_only
@pytest.mark.skipif(LEGACY, reason="xplique is compared under Keras 3 on TensorFlow (its own mode)")
@pytest.mark.parametrize("patch,stride,fill", [(2, 2, 0.0), ((4, 3), (2, 3), -1.0)])
def test_occlusion_equals_xplique(patch, stride, fill):
    """xplique sums the score drops of the patches over each pixel, on patches that fit: with
    sizes where (n - p) is a multiple of the stride the patches are the same, and ours times the
    number of covering patches is xplique's sum."""
    pytest.importorskip("xplique", reason="the peer xplique is not installed (see the Makefile's install-test)")
    import tensorflow as tf
    from xplique.attributions import Occlusion as XOcclusion

    shape = (10, 12, 3)
    model = build(shape, seed=45)
    x = images(shape, 2, 45)
    classes = top1(model, x)
    ours = Occlusion(model, patch_size=patch, stride=stride, fill=fill)(x, targets=classes, normalize=False)
    peer = XOcclusion(model, patch_size=patch, patch_stride=stride, occlusion_value=fill, batch_size=16)
    theirs = np.asarray(peer.explain(tf.constant(x), tf.one_hot(classes, CLASSES)))[..., 0]
    p = (patch, patch) if isinstance(patch, int) else patch
    s = (stride, stride) if isinstance(stride, int) else stride
    count = np.zeros(shape[:-1])
    for a in range(0, shape[0] - p[0] + 1, s[0]):
        for b in range(0, shape[1] - p[1] + 1, s[1]):
            count[a:a + p[0], b:b + p[1]] += 1
    assert_close_to_max(ours * count, theirs, rtol=1e-4)


def test_short_names_sobol_and_hsic():
    assert kc.methods.get("Sobol") is SobolAttribution and kc.methods.get("hsic") is HSICAttribution
    assert kc.methods.canonical("HSIC") == "hsicattribution"
    assert "sobol" not in kc.methods.names()  # the registry lists each method once, by its full name
