# The test command of the README: the suite under Keras 3 on TensorFlow, under legacy tf-keras,
# then under Keras 3 on JAX and on PyTorch (there, the tests that are TensorFlow by nature are skipped).
PYTHON ?= python

.PHONY: install-test test test-keras3 test-legacy test-jax test-torch bench

# What the tests need, on a CPU machine (run as root, or with chromium installed). tf-keras, tensorflow-hub and keras-hub's
# tensorflow-text declare a dependency on the full `tensorflow` (572 MB), which would
# go in over tensorflow-cpu: they are installed without their dependencies, after
# keras-hub's other ones.
install-test:
	$(PYTHON) -m pip install -q "tensorflow-cpu==2.21.0"
	$(PYTHON) -m pip install -q -e ".[test]"
	$(PYTHON) -m pip install -q --no-deps "tf-keras==2.21.0" "tensorflow-hub==0.16.1"
	$(PYTHON) -m pip install -q "regex" "kagglehub" "kagglesdk==0.1.28" "sentencepiece" "tokenizers"
	$(PYTHON) -m pip install -q --no-deps "keras-hub==0.32.0" "tensorflow-text==2.21.0"
	@# The other two Keras backends, CPU builds (an unpinned torch pulls a CUDA build of several GB).
	$(PYTHON) -m pip install -q "jax[cpu]" "torch==2.13.0"
	@# Peers the tests compare with: xplique (Occlusion) declares old scipy/scikit-learn pins and
	@# imports fine without them; shap (KernelSHAP's KernelExplainer).
	$(PYTHON) -m pip install -q --no-deps "xplique==2.0.2" "tensorflow-probability==0.25.0" "einops" "dm-tree"
	$(PYTHON) -m pip install -q "decorator" "deprecated" "shap==0.51.0"
	@# Quantus 0.6 (the metrics' reference) pins tensorflow<=2.20 and opencv; it imports without them.
	$(PYTHON) -m pip install -q --no-deps "quantus==0.6.0"
	$(PYTHON) -m pip install -q "cachetools"
	@# tensorflow-hub imports pkg_resources, which setuptools 81 and later no longer ship.
	$(PYTHON) -m pip install -q "setuptools<81"
	@# Headless Chromium for the audit report's browser test (tests/test_audit.py).
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  { echo "install Debian's chromium (apt-get install chromium) for tests/test_audit.py" >&2; exit 1; }

# The four test modes, two at a time. The cases marked `slow` run in the Keras 3 / TensorFlow mode
# only (tests/slow.py says why each is covered in the others); KERAS_CAM_SLOW=all runs them in all four. (the machine has 2 cores): make starts the next mode as
# soon as one ends, the slowest (JAX, which compiles every explainer) first. -k runs every
# mode even after one fails; any failure fails `make test`.
test:
	$(MAKE) --no-print-directory -k -j2 test-jax test-keras3 test-legacy test-torch

test-keras3:
	KERAS_BACKEND=tensorflow $(PYTHON) -m pytest -q -p no:cacheprovider --durations=8

test-legacy:
	KERAS_BACKEND=tensorflow TF_USE_LEGACY_KERAS=1 $(PYTHON) -m pytest -q -p no:cacheprovider --durations=8

test-jax:
	KERAS_BACKEND=jax $(PYTHON) -m pytest -q -p no:cacheprovider --durations=8

test-torch:
	KERAS_BACKEND=torch $(PYTHON) -m pytest -q -p no:cacheprovider --durations=8

bench:
	$(PYTHON) bench/bench_gradcam.py
	$(PYTHON) bench/bench_scorecam.py
	$(PYTHON) bench/bench_streaming.py
	$(PYTHON) bench/bench_ablation.py
	$(PYTHON) bench/bench_ablation.py --layer block_16_project_BN
	$(PYTHON) bench/bench_callback.py
	$(PYTHON) bench/bench_dataset.py
	$(PYTHON) bench/bench_build.py
	$(PYTHON) bench/bench_quality.py
	$(PYTHON) bench/bench_blackbox.py
	$(PYTHON) bench/bench_new_cams.py
	$(PYTHON) bench/bench_concepts.py
	$(PYTHON) bench/bench_backends.py
