"""Overlays, grid figures and VizGradCAM, checked against hand computations.

The Grad-CAM references are closed forms computed in NumPy from the layers'
weights and activations (no automatic differentiation), so they hold on
every backend.
"""

import cv2
import matplotlib
import numpy as np
import pytest

import keras_cam as kc
from keras_cam import viz
from keras_cam._compat import keras, ops, to_host
from keras_cam.vizgradcam import VizGradCAM, last_conv_layer

L = keras.layers


def jet_rgb(levels):
    """OpenCV's jet colours of uint8 levels, as RGB."""
    return cv2.applyColorMap(np.asarray(levels, np.uint8), cv2.COLORMAP_JET)[..., ::-1]


def jet_levels(rgb):
    """The uint8 level of each jet colour (OpenCV's jet has 256 distinct colours)."""
    codes = jet_rgb(np.arange(256)[:, None])[:, 0].astype(np.int64) @ [65536, 256, 1]
    order = np.argsort(codes)
    wanted = np.asarray(rgb).astype(np.int64) @ [65536, 256, 1]
    pos = np.searchsorted(codes[order], wanted)
    assert (codes[order][pos] == wanted).all(), "not a jet colour"
    return order[pos]


# ---------------------------------------------------------------- overlay

IMAGE = np.array([[[10, 20, 30], [200, 100, 0]],
                  [[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
HEAT = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
LEVELS = np.array([[0, 64], [128, 255]], dtype=np.uint8)  # round(255 * HEAT), by hand


def test_overlay_2x2_by_hand():
    out = kc.overlay(IMAGE, HEAT, alpha=0.5, colormap="jet")
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    # Jet's ends, known by heart: level 0 is dark blue (0, 0, 128), 255 dark red (128, 0, 0).
    assert out[0, 0].tolist() == [5, 10, 79]        # (10, 20, 30) / 2 + (0, 0, 128) / 2
    assert out[1, 1].tolist() == [192, 128, 128]    # (255, 255, 255) / 2 + (128, 0, 0) / 2, 127.5 -> 128
    colours = jet_rgb(LEVELS).astype(np.float64)
    for alpha in (0.3, 0.5, 0.8):
        expected = np.rint((1 - alpha) * IMAGE + alpha * colours).astype(np.uint8)
        np.testing.assert_array_equal(kc.overlay(IMAGE, HEAT, alpha=alpha), expected)


def test_overlay_alpha_ends():
    np.testing.assert_array_equal(kc.overlay(IMAGE, HEAT, alpha=0), IMAGE)
    np.testing.assert_array_equal(kc.overlay(IMAGE, HEAT, alpha=1), jet_rgb(LEVELS))
    np.testing.assert_array_equal(
        kc.overlay(IMAGE, HEAT, alpha=1, colormap="viridis"),
        cv2.applyColorMap(LEVELS, cv2.COLORMAP_VIRIDIS)[..., ::-1],
    )


def test_overlay_image_kinds_agree():
    ref = kc.overlay(IMAGE, HEAT, alpha=0.4)
    np.testing.assert_array_equal(kc.overlay(IMAGE / 255.0, HEAT, alpha=0.4), ref)             # float [0, 1]
    np.testing.assert_array_equal(kc.overlay(IMAGE.astype(np.float32), HEAT, alpha=0.4), ref)  # float [0, 255]
    np.testing.assert_array_equal(kc.overlay(IMAGE.astype(np.int64), HEAT, alpha=0.4), ref)
    np.testing.assert_array_equal(kc.overlay(ops.convert_to_tensor(IMAGE), HEAT, alpha=0.4), ref)  # the backend's
    np.testing.assert_array_equal(kc.overlay(IMAGE, ops.convert_to_tensor(HEAT), alpha=0.4), ref)
    np.testing.assert_array_equal(kc.overlay(IMAGE, LEVELS, alpha=0.4), ref)                   # uint8 heatmap
    np.testing.assert_array_equal(kc.overlay(IMAGE, HEAT[..., None], alpha=0.4), ref)
    rgba = np.concatenate([IMAGE, np.full((2, 2, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(kc.overlay(rgba, HEAT, alpha=0.4), ref)


def test_overlay_grayscale():
    gray = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    expected = np.rint(0.75 * gray[..., None] + 0.25 * jet_rgb(LEVELS)).astype(np.uint8)
    np.testing.assert_array_equal(kc.overlay(gray, HEAT, alpha=0.25), expected)
    np.testing.assert_array_equal(kc.overlay(gray[..., None], HEAT, alpha=0.25), expected)
    np.testing.assert_array_equal(kc.overlay(gray / 255.0, HEAT, alpha=0.25), expected)


def bilinear(h, size):
    """Bilinear resize with half-pixel centres (OpenCV's and TensorFlow's rule), in float64."""
    def axis(n, m):
        src = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, m - 1), src - i0
    (r0, r1, fr), (c0, c1, fc) = axis(size[0], h.shape[0]), axis(size[1], h.shape[1])
    h = h.astype(np.float64)
    top = h[r0][:, c0] * (1 - fc) + h[r0][:, c1] * fc
    bottom = h[r1][:, c0] * (1 - fc) + h[r1][:, c1] * fc
    return top * (1 - fr[:, None]) + bottom * fr[:, None]


def test_overlay_resizes_heatmap_bilinearly():
    heat = np.array([[0.13, 0.71], [0.37, 0.94]], np.float32)  # no level lands near a .5 tie
    levels = 255 * bilinear(heat, (4, 6))
    assert np.abs(levels - np.floor(levels) - 0.5).min() > 0.01
    out = kc.overlay(np.zeros((4, 6, 3), np.uint8), heat, alpha=1)
    assert out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out, jet_rgb(np.rint(levels)))


def test_colormap_names():
    ref = kc.overlay(IMAGE, HEAT, alpha=1, colormap="turbo")
    np.testing.assert_array_equal(kc.overlay(IMAGE, HEAT, alpha=1, colormap="COLORMAP_TURBO"), ref)
    np.testing.assert_array_equal(kc.overlay(IMAGE, HEAT, alpha=1, colormap=cv2.COLORMAP_TURBO), ref)
    with pytest.raises(ValueError, match="Unknown colormap 'jett'.*'jet'"):
        kc.overlay(IMAGE, HEAT, colormap="jett")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(alpha=1.5), ValueError, "alpha"),
    (dict(alpha=True), ValueError, "alpha"),
    (dict(heatmap=HEAT * 3), ValueError, r"heatmap.*\[0, 3\].*normalize=True"),
    (dict(heatmap=HEAT[None]), ValueError, r"maps\[i\]"),
    (dict(heatmap=np.full((2, 2), np.nan)), ValueError, "heatmap"),
    (dict(image=IMAGE[None]), ValueError, r"images\[i\]"),
    (dict(image=np.zeros((2, 2, 2))), ValueError, r"\(H, W, 3\)"),
    (dict(image=IMAGE - 128.0), ValueError, "before the model's preprocessing"),
    (dict(image=np.zeros((2, 2, 3), bool)), TypeError, "dtype bool"),
])
def test_overlay_bad_input(kwargs, error, match):
    args = dict(image=IMAGE, heatmap=HEAT, alpha=0.5)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        kc.overlay(args.pop("image"), args.pop("heatmap"), **args)


# ---------------------------------------------------------------- plot

@pytest.fixture(scope="module")
def cnn():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        L.Conv2D(8, 3, activation="relu", name="conv1"),
        L.Conv2D(8, 3, activation="relu", name="last_conv"),
        L.BatchNormalization(name="bn"),
        L.GlobalAveragePooling2D(),
        L.Dense(3, activation="softmax", name="head"),
    ])
    images = np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)
    return model, images


def test_plot_grid_cells_are_overlays(cnn, tmp_path):
    import matplotlib.pyplot as plt

    model, images = cnn
    rc = dict(matplotlib.rcParams)
    pyplot_figures = plt.get_fignums()
    names = ["circle", "square", "triangle"]
    columns = [kc.GradCAM(model, layer="last_conv"), kc.GradCAMPlusPlus(model, layer="last_conv"),
               kc.GradCAM(model, layer="conv1")]
    out = tmp_path / "grid.png"
    fig = kc.plot(images, columns, targets=[0, 2], class_names=names, labels=[1, 0],
                  alpha=0.4, colormap="turbo", row_titles=["first", "second"], path=out)

    assert isinstance(fig, matplotlib.figure.Figure)
    assert dict(matplotlib.rcParams) == rc and plt.get_fignums() == pyplot_figures
    axes = np.array(fig.axes).reshape(2, 4)
    for i in range(2):
        np.testing.assert_array_equal(axes[i, 0].images[0].get_array(), viz.as_rgb_uint8(images[i]))
        assert axes[i, 0].get_ylabel() == ["first", "second"][i]
        for j, explainer in enumerate(columns):
            result = explainer.explain(images, targets=[0, 2])
            expected = kc.overlay(images[i], result.maps[i], alpha=0.4, colormap="turbo")
            np.testing.assert_array_equal(np.asarray(axes[i, j + 1].images[0].get_array()), expected)
            cell = f"{names[[0, 2][i]]} {result.probabilities[i]:.2f}"
            assert axes[i, j + 1].get_title().split("\n")[-1] == cell
    assert axes[0, 0].get_title() == "image\ntrue: square" and axes[1, 0].get_title() == "true: circle"
    # The layers differ between columns, so the headers name them.
    assert [a.get_title().split("\n")[:2] for a in axes[0, 1:]] == [
        ["GradCAM", "last_conv"], ["GradCAMPlusPlus", "last_conv"], ["GradCAM", "conv1"]]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # shown inline in notebooks


def test_plot_precomputed_columns(cnn):
    model, images = cnn
    result = kc.GradCAM(model).explain(images)
    maps = np.stack([np.eye(32, dtype=np.float32)] * 2)
    fig = kc.plot(images, {"explained": result, "diagonal": maps}, show_image=False)
    axes = np.array(fig.axes).reshape(2, 2)
    assert axes[0, 0].get_title() == f"explained\nclass {result.targets[0]} {result.probabilities[0]:.2f}"
    assert axes[0, 1].get_title() == "diagonal\n"
    np.testing.assert_array_equal(axes[1, 1].images[0].get_array(), kc.overlay(images[1], maps[1]))
    one = kc.plot(images[0], kc.GradCAM(model))  # one image: a single row
    assert len(one.axes) == 2
    with pytest.raises(ValueError, match="'few' has 1 maps for 2 images"):
        kc.plot(images, {"few": maps[:1]})
    with pytest.raises(TypeError, match="Column 'bad'"):
        kc.plot(images, {"bad": "not maps"})
    for empty in ([], {}):
        with pytest.raises(ValueError, match="columns"):
            kc.plot(images, empty)


# ---------------------------------------------------------------- VizGradCAM

def expected_heatmap(model, image):
    """Grad-CAM at ``last_conv`` by the closed form of a linear head, outside keras-cam.

    After ``last_conv`` the model is BN (inference: ``s_k a + t_k``), global
    average pooling and a Dense layer, so the logit of class c is
    ``S = sum_k W_kc s_k mean_ij A^k_ij + const`` and ``dS/dA^k_ij = W_kc s_k / (h w)``.
    """
    a = to_host(model.get_layer("last_conv")(model.get_layer("conv1")(image[None])))[0]
    bn = model.get_layer("bn")
    gamma, beta, mean, var = bn.get_weights()
    s = gamma / np.sqrt(var + bn.epsilon)
    kernel = model.get_layer("head").get_weights()[0]
    c = int(np.argmax(model.predict(image[None], verbose=0)))
    weights = kernel[:, c] * s / (a.shape[0] * a.shape[1])
    cam = np.maximum(np.tensordot(a, weights, axes=([2], [0])), 0)
    up = bilinear(cam, image.shape[:2])
    return (up - up.min()) / (up.max() - up.min()), a, kernel, s, c


def test_vizgradcam_heatmap_by_closed_form(cnn):
    model, images = cnn
    assert last_conv_layer(model, images[:1]) == "last_conv"  # the conv, not the BN after it
    heat = VizGradCAM(model, images[0], plot_results=False)
    assert heat.dtype == np.uint8 and heat.shape == (32, 32, 3)
    levels = jet_levels(heat)
    ref, a, kernel, s, c = expected_heatmap(model, images[0])
    assert np.abs(levels - 255 * ref).max() <= 0.5 + 1e-3  # jet colour of round(255 * map)
    np.testing.assert_array_equal(levels, np.rint(255 * kc.GradCAM(model, layer="last_conv")(images[0])))

    # The test tells logit from probability: the probability gradient
    # dp_c/dA = p_c (dS_c - sum_j p_j dS_j) weights the channels differently.
    p = model.predict(images[:1], verbose=0)[0]
    w_prob = p[c] * (kernel[:, c] - kernel @ p) * s
    prob_map = np.maximum(np.tensordot(a, w_prob, axes=([2], [0])), 0)
    prob_map = bilinear(prob_map, (32, 32))
    prob_map = (prob_map - prob_map.min()) / (prob_map.max() - prob_map.min())
    assert (np.rint(255 * prob_map) != levels).mean() > 0.5


def test_vizgradcam_plots_blend_without_rcparams(cnn):
    import matplotlib.pyplot as plt

    model, images = cnn
    rc = dict(matplotlib.rcParams)
    fig = plt.figure()
    try:
        assert VizGradCAM(model, images[1], interpolant=0.25) is None
        assert dict(matplotlib.rcParams) == rc
        drawn = np.asarray(plt.gca().images[0].get_array())
        heat = VizGradCAM(model, images[1][None], plot_results=False).astype(np.float64)
        shown = np.rint(255 * (images[1] - images[1].min()) / np.ptp(images[1]))
        np.testing.assert_array_equal(drawn, np.rint(shown * 0.25 + heat * 0.75).astype(np.uint8))
        assert plt.gca().get_title().startswith("Grad-CAM: class ")
    finally:
        plt.close(fig)


def test_vizgradcam_bad_input(cnn):
    model, images = cnn
    with pytest.raises(ValueError, match="interpolant"):
        VizGradCAM(model, images[0], interpolant=2)
    with pytest.raises(ValueError, match="batch of 2"):
        VizGradCAM(model, images, plot_results=False)
    with pytest.raises(TypeError, match="Keras model"):
        VizGradCAM("model.h5", images[0])
    dense = keras.Sequential([keras.Input((4, 4, 1)), L.Flatten(), L.Dense(2)])
    with pytest.raises(ValueError, match="no 2-D convolution"):
        VizGradCAM(dense, np.zeros((4, 4, 1), np.float32))


def efficientnet_recipes(library):
    """The Colab recipe: EfficientNetB0 base (64x64, no weights) + GAP + Dense(3, softmax),
    built flat (on the base's tensors) and nested (the base as one layer). Both share
    the base and the head, so they are the same function."""
    if library == "efficientnet":
        import efficientnet.tfkeras as efn

        base = efn.EfficientNetB0(weights=None, include_top=False, input_shape=(64, 64, 3))
    else:
        base = keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(64, 64, 3))
    head = L.Dense(3, activation="softmax")
    flat = keras.Model(base.input, head(L.GlobalAveragePooling2D()(base.output)))
    inputs = keras.Input((64, 64, 3))
    nested = keras.Model(inputs, head(L.GlobalAveragePooling2D()(base(inputs))))
    return base, head, flat, nested


def swish_grad(z):
    """d/dz (z sigmoid(z)) = sigmoid(z) (1 + z (1 - sigmoid(z)))."""
    sig = 1 / (1 + np.exp(-z))
    return sig * (1 + z * (1 - sig))


def efficientnet_gradcam(base, head, image):
    """Grad-CAM of the top logit at ``top_conv``, by the chain rule in closed form:
    after ``top_conv`` come BN (inference: ``z = s_k a + t_k``), swish, global average
    pooling and the head's kernel ``W``, so ``dS_c/da_ijk = W_kc s_k swish'(z_ijk) / (h w)``.
    The activations come from the base's own graph up to ``top_conv``."""
    features = keras.Model(base.input, base.get_layer("top_conv").output)
    a = to_host(features(image[None], training=False))[0].astype(np.float64)
    bn = base.get_layer("top_bn")
    gamma, beta, mean, var = (w.astype(np.float64) for w in bn.get_weights())
    s = gamma / np.sqrt(var + bn.epsilon)
    z = s * a + (beta - mean * s)
    kernel, bias = (w.astype(np.float64) for w in head.get_weights())
    logits = (z / (1 + np.exp(-z))).mean(axis=(0, 1)) @ kernel + bias
    c = int(np.argmax(logits))
    g = kernel[:, c] * s * swish_grad(z) / (a.shape[0] * a.shape[1])
    cam = np.maximum(np.tensordot(a, g.mean(axis=(0, 1)), axes=([2], [0])), 0)
    up = bilinear(cam, image.shape[:2])
    return (up - up.min()) / (up.max() - up.min())


@pytest.mark.parametrize("library", [
    pytest.param("efficientnet", marks=pytest.mark.tensorflow_only),  # efficientnet.tfkeras builds with tf.keras
    "keras.applications"])
def test_vizgradcam_efficientnet_flat_and_nested(library):
    keras.utils.set_random_seed(2)
    base, head, flat, nested = efficientnet_recipes(library)
    image = np.random.default_rng(2).uniform(0, 255, (64, 64, 3)).astype(np.float32)
    expected = 255 * efficientnet_gradcam(base, head, image)
    assert last_conv_layer(nested, image[None]) == f"{base.name}/top_conv"
    for model, batch_axis in ((flat, library == "efficientnet"), (nested, library != "efficientnet")):
        heat = VizGradCAM(model, image[None] if batch_axis else image, plot_results=False)
        assert heat.shape == (64, 64, 3) and heat.dtype == np.uint8
        levels = jet_levels(heat)
        assert np.abs(levels - expected).max() <= 0.5 + 1e-2
    if library == "keras.applications":  # the explainer's compiled path agrees
        maps = kc.GradCAM(nested, layer=f"{base.name}/top_conv")(image)
        np.testing.assert_array_equal(levels, np.rint(255 * maps))


# ---------------------------------------------------------------- 1-D signals and 3-D volumes

JET_TOP = (128, 0, 0)  # jet's colour of level 255 (dark red); level 0 is (0, 0, 128)


def test_overlay_signal_pixels():
    t = np.arange(40)
    signal = np.stack([np.sin(t / 4.0), np.where(t == 30, 2.0, 0.0)], axis=-1)  # two channels
    heat = np.clip(1 - np.abs(t - 12) / 6.0, 0, 1)  # peak 1 at t = 12, 0 far from it
    out = kc.overlay(signal, heat, alpha=1.0)
    h = viz.SIGNAL_HEIGHT
    assert out.shape == (2 * h, 40, 3) and out.dtype == np.uint8
    # Channel 0's line: max at row 0, min at the strip's last row, black; everything else the band.
    rows = np.rint((signal[:, 0].max() - signal[:, 0]) / np.ptp(signal[:, 0]) * (h - 1)).astype(int)
    for col in (12, 25):
        line = {r for r in range(min(rows[col - 1], rows[col]), max(rows[col - 1], rows[col]) + 1)}
        for r in range(h):
            expected = (0, 0, 0) if r in line else tuple(jet_rgb([[round(255 * heat[col])]])[0, 0])
            assert tuple(out[r, col]) == expected, (col, r)
    assert tuple(out[h + 5, 12]) == JET_TOP  # the peak's band spans every channel's strip
    assert tuple(out[h + 5, 30]) == (0, 0, 0) and tuple(out[h, 30]) == (0, 0, 0)  # the spike reaches the top
    assert tuple(out[2 * h - 1, 0]) == (0, 0, 0)  # channel 1's baseline is its minimum: the strip's bottom
    # alpha blends the band with white; the map is resized linearly to the signal.
    half = kc.overlay(signal[:, 0], heat[::2], alpha=0.5)
    up = viz.resize_linear(heat[::2], (40,))
    band = np.rint(0.5 * 255 + 0.5 * jet_rgb(np.rint(255 * up)[None].astype(np.uint8))[0]).astype(np.uint8)
    free = [r for r in range(h) if r != rows[0]]
    np.testing.assert_array_equal(half[free[-1], 0], band[0])
    assert tuple(kc.overlay(signal[:, 0], heat, alpha=0)[rows[20] - 1 if rows[20] else rows[20] + 2, 20]) == (255, 255, 255)


def test_resize_linear_matches_the_backends_image_resize():
    """The half-pixel convention of ``keras.ops.image.resize`` (``tf.image.resize`` on
    TensorFlow) on the running backend, and of the hand-written ``bilinear``."""
    rng = np.random.default_rng(0)
    for shape, size in (((5, 7), (9, 3)), ((4, 4), (12, 10)), ((8, 6), (3, 5))):
        x = rng.random(shape)
        ref = to_host(ops.image.resize(x[None, ..., None].astype(np.float32), size, interpolation="bilinear",
                                       antialias=False))[0, ..., 0]
        np.testing.assert_allclose(viz.resize_linear(x, size), ref, atol=1e-5)
        np.testing.assert_allclose(viz.resize_linear(x, size), bilinear(x, size), atol=1e-12)


def test_overlay_volume_slices_through_the_peak():
    rng = np.random.default_rng(0)
    volume = rng.random((6, 8, 10)) * 1000 - 500  # any range: shown scaled to its own
    heat = rng.random((6, 8, 10)) * 0.9
    d, y, x = 2, 5, 7
    heat[d, y, x] = 1.0
    out = kc.overlay(volume[..., None], heat, alpha=1.0)
    gap = viz.SLICE_GAP
    assert out.shape == (8, 10 + gap + 10 + gap + 8, 3)
    # The peak voxel in each slice: axial [d] at (y, x), coronal [:, y] at (d, x), sagittal [:, :, x] at (d, y).
    assert tuple(out[y, x]) == JET_TOP
    assert tuple(out[d, 10 + gap + x]) == JET_TOP
    assert tuple(out[d, 2 * (10 + gap) + y]) == JET_TOP
    np.testing.assert_array_equal(out[:8, :10], jet_rgb(np.rint(255 * heat[d]).astype(np.uint8)))
    np.testing.assert_array_equal(out[:6, 10 + gap:20 + gap], jet_rgb(np.rint(255 * heat[:, y]).astype(np.uint8)))
    assert (out[6:, 10 + gap:] == 255).all() and (out[:, 10:10 + gap] == 255).all()  # white below D rows, gaps
    # alpha = 0: the volume's own slices in gray, min black and max white over the whole volume.
    plain = kc.overlay(volume, heat, alpha=0.0)
    gray = np.rint((volume - volume.min()) / np.ptp(volume) * 255)
    np.testing.assert_array_equal(plain[:8, :10, 0], gray[d])
    np.testing.assert_array_equal(plain[:6, 2 * (10 + gap):, 1], gray[:, :, x])
    # A coarser map is resized trilinearly first, then cut through its peak.
    small = np.zeros((3, 4, 5))
    small[1, 2, 3] = 1.0
    big, peak = viz.volume_slices(small, (6, 8, 10))
    np.testing.assert_allclose(big, viz.resize_linear(small, (6, 8, 10)))
    assert tuple(out.shape) and tuple(kc.overlay(volume[..., None], small, alpha=1.0)[peak[1], peak[2]]) == tuple(
        jet_rgb([[round(255 * big.max())]])[0, 0])


def test_plot_signals_and_volumes(rng):
    signals = rng.normal(size=(2, 32, 3)).astype(np.float32)
    maps = rng.random((2, 32)).astype(np.float32)
    fig = kc.plot(signals, {"m": maps}, spatial=1)
    axes = np.array(fig.axes).reshape(2, 2)
    np.testing.assert_array_equal(axes[1, 1].images[0].get_array(), kc.overlay(signals[1], maps[1]))
    np.testing.assert_array_equal(axes[1, 0].images[0].get_array(), kc.overlay(signals[1], maps[1], alpha=0))
    volumes = rng.random((2, 4, 6, 6, 1)).astype(np.float32)
    vmaps = rng.random((2, 4, 6, 6)).astype(np.float32)
    fig = kc.plot(volumes, {"v": vmaps}, spatial=3, alpha=0.3)
    axes = np.array(fig.axes).reshape(2, 2)
    np.testing.assert_array_equal(axes[0, 1].images[0].get_array(), kc.overlay(volumes[0], vmaps[0], alpha=0.3))
    with pytest.raises(TypeError, match=r"maps \(N, d, h, w\)"):
        kc.plot(volumes, {"v": vmaps[:, 0, 0]}, spatial=3)
    with pytest.raises(ValueError, match="spatial"):
        kc.plot(volumes, {"v": vmaps}, spatial=4)


def test_plot_reads_the_layout_from_the_explainers_model(rng):
    from types import SimpleNamespace

    def explainer_of(shape):  # what plot reads of an explainer: its model's image input
        return SimpleNamespace(graph=SimpleNamespace(model=keras.Sequential([keras.Input(shape), L.Flatten()]),
                                                     input_index=0))
    assert viz._spatial_rank([explainer_of((32, 2))], None) == 1
    assert viz._spatial_rank([explainer_of((4, 6, 6, 1))], None) == 3
    assert viz._spatial_rank([explainer_of((8, 8, 3))], None) == 2
    maps = rng.random((2, 32))
    assert viz._spatial_rank([maps], None) == 2 and viz._spatial_rank([maps], 1) == 1


def test_vizgradcam_layer_reproduces_another_choice(cnn):
    """``layer=`` explains the named layer: Grad-CAM at ``conv1`` by the chain rule in
    closed form. After ``conv1`` come ``last_conv`` (3x3 valid, ReLU: ``y = relu(z)``),
    BN (``s_k y + t_k``), average pooling and the head, so ``dS_c/dz = W_kc s_k [z > 0] / (h w)``
    and ``dS_c/da`` is that spread back through the kernel:
    ``dS/da[i + di, j + dj, m] = sum_k dS/dz[i, j, k] K[di, dj, m, k]``."""
    model, images = cnn
    a = to_host(model.get_layer("conv1")(images[:1]))[0].astype(np.float64)
    y = to_host(model.get_layer("last_conv")(a[None].astype(np.float32)))[0].astype(np.float64)
    bn = model.get_layer("bn")
    gamma, beta, mean, var = (w.astype(np.float64) for w in bn.get_weights())
    s = gamma / np.sqrt(var + bn.epsilon)
    kernel, bias = (w.astype(np.float64) for w in model.get_layer("head").get_weights())
    logits = (s * y + beta - mean * s).mean(axis=(0, 1)) @ kernel + bias
    c = int(np.argmax(logits))
    dz = (y > 0) * (kernel[:, c] * s) / (y.shape[0] * y.shape[1])
    conv_kernel = model.get_layer("last_conv").get_weights()[0].astype(np.float64)
    g = np.zeros_like(a)
    for di in range(3):
        for dj in range(3):
            g[di:di + y.shape[0], dj:dj + y.shape[1]] += dz @ conv_kernel[di, dj].T
    cam = np.maximum(np.tensordot(a, g.mean(axis=(0, 1)), axes=([2], [0])), 0)
    up = bilinear(cam, (32, 32))
    expected = 255 * (up - up.min()) / (up.max() - up.min())
    heat = VizGradCAM(model, images[0], plot_results=False, layer="conv1")
    assert np.abs(jet_levels(heat) - expected).max() <= 0.5 + 1e-2
    default = VizGradCAM(model, images[0], plot_results=False)
    assert (jet_levels(default) != jet_levels(heat)).mean() > 0.5  # a different layer's map
