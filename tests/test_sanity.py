"""The cascading-randomization sanity check: similarity numbers against scipy and
scikit-image, the user's model untouched, a weight-blind "method" flagged."""

import numpy as np
import pytest
from scipy import stats
from skimage.metrics import structural_similarity

import keras_cam as kc
from keras_cam import sanity
from keras_cam._compat import keras, ops
from keras_cam.methods.guided import GuidedBackprop

H = W = 24


class InputIntensity(kc.Explainer):
    """A broken "method": the map is the image's brightness, whatever the model."""

    def raw_maps(self, images, class_idx, target_fn=None):
        _, outputs = self.graph.forward(images)
        return ops.mean(images, axis=-1), self.target_scores(outputs, class_idx, target_fn)


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained (to 100% held-out accuracy) to tell a square's colour
    channel, the square anywhere on a noisy background."""
    def data(n, seed):
        rng = np.random.default_rng(seed)
        x = rng.normal(0, 0.1, (n, H, W, 3)).astype(np.float32)
        y = rng.integers(0, 3, n)
        for i, c in enumerate(y):
            r, q = rng.integers(0, H - 6, size=2)
            x[i, r:r + 6, q:q + 6, c] += 1.0
        return x, y

    keras.utils.set_random_seed(0)
    inp = keras.Input((H, W, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(h)
    out = keras.layers.Dense(3, name="dense")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*data(192, 0), epochs=5, batch_size=32, verbose=0)
    x, y = data(64, 1)
    assert np.mean(model.predict(x, verbose=0).argmax(axis=1) == y) > 0.9, "the fixture model did not learn"
    return model, x[:6]


def test_rank_and_spearman_against_scipy():
    np.testing.assert_array_equal(sanity.rank([[3.0, 1.0, 1.0, 2.0]]), [[4.0, 1.5, 1.5, 3.0]])
    rng = np.random.default_rng(1)
    a = rng.random((3, 5, 5)).round(1)          # rounded: many ties
    b = a + rng.normal(0, 0.2, a.shape)
    expected = [stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(3)]
    np.testing.assert_allclose(sanity.spearman(a, b), expected, rtol=1e-10)
    assert sanity.spearman(np.ones((1, 3, 3)), a[:1, :3, :3])[0] == 0.0


def test_ssim_against_scikit_image():
    rng = np.random.default_rng(2)
    a = rng.random((2, 32, 28))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    expected = [structural_similarity(a[i], b[i], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False) for i in range(2)]
    np.testing.assert_allclose(sanity.ssim(a, b), expected, atol=1e-4)
    np.testing.assert_allclose(sanity.ssim(a, a), [1.0, 1.0], atol=1e-6)


def test_gradcam_passes_and_the_user_model_is_untouched(trained):
    model, x = trained
    weights = [w.copy() for w in model.get_weights()]
    result = kc.sanity_check(kc.GradCAM, model, x, explainer_kwargs={"layer": "conv2"})
    assert result.steps == ["original", "dense", "conv2", "conv1"]
    assert result.maps.shape == (4, len(x), H, W)
    # the numbers are those of the maps the result holds
    for k in range(4):
        np.testing.assert_allclose(result.spearman[k], np.mean(
            [stats.spearmanr(result.maps[0, i].ravel(), result.maps[k, i].ravel()).statistic
             if result.maps[k, i].std() > 0 else 0.0 for i in range(len(x))]), atol=1e-9)
    assert result.spearman[0] == pytest.approx(1.0) and result.ssim[0] == pytest.approx(1.0)
    assert result.spearman[-1] < 0.5 and not result.ignores_weights
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    # the step-0 maps are the trained model's maps
    np.testing.assert_allclose(result.maps[0], kc.GradCAM(model, layer="conv2")(x), atol=1e-6)


def test_a_layer_of_constant_weights_is_still_randomized(trained):
    """A head whose kernel is all ones and bias all zeros (no spread to draw from): its step draws the
    kernel around 1 with Glorot's standard deviation, says so, and the maps change at that step; the
    user's model keeps its ones."""
    model, x = trained
    inp = keras.Input((H, W, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(h)
    out = keras.layers.Dense(3, kernel_initializer="ones", name="dense")(keras.layers.GlobalAveragePooling2D()(h))
    flat = keras.Model(inp, out)
    flat.get_layer("conv1").set_weights(model.get_layer("conv1").get_weights())
    flat.get_layer("conv2").set_weights(model.get_layer("conv2").get_weights())
    with pytest.warns(UserWarning, match="every trainable weight of layer 'dense' is constant"):
        result = kc.sanity_check(kc.GradCAM, flat, x, targets=0, explainer_kwargs={"layer": "conv2"},
                                 cascade=["dense"])
    assert result.steps == ["original", "dense"] and result.spearman[1] < 0.9999     # it was exactly 1
    assert not np.allclose(result.maps[1], result.maps[0])
    np.testing.assert_array_equal(flat.get_layer("dense").get_weights()[0], np.ones((8, 3), np.float32))


def test_a_method_that_ignores_the_weights_is_flagged(trained):
    model, x = trained
    result = kc.sanity_check(InputIntensity, model, x)
    np.testing.assert_allclose(result.spearman, 1.0, atol=1e-12)
    np.testing.assert_allclose(result.ssim, 1.0, atol=1e-6)
    assert result.ignores_weights


def test_guided_gradients_are_compared_and_plotted(trained):
    model, x = trained
    result = kc.sanity_check(GuidedBackprop, model, x, cascade=["dense", "conv2"])
    assert result.steps == ["original", "dense", "conv2"]
    g = GuidedBackprop(model)(x, targets=result_targets(model, x))
    m = np.abs(g).sum(-1)
    np.testing.assert_allclose(result.maps[0], m / m.max(axis=(1, 2), keepdims=True), atol=1e-5)
    fig = result.plot()
    assert len(fig.axes) == 1 + 3


def result_targets(model, x):
    return model.predict(x, verbose=0).argmax(axis=1)


def test_bad_inputs():
    with pytest.raises(TypeError, match="Keras model"):
        kc.sanity_check(kc.GradCAM, "model", np.zeros((1, H, W, 1)))
