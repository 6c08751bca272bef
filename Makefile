# The test command of the README: the suite under Keras 3, then under legacy tf-keras.
PYTHON ?= python

.PHONY: install-test test test-keras3 test-legacy bench

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
	@# Headless Chromium for the audit report's browser test (tests/test_audit.py).
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  { echo "install Debian's chromium (apt-get install chromium) for tests/test_audit.py" >&2; exit 1; }

test: test-keras3 test-legacy

test-keras3:
	$(PYTHON) -m pytest -q

test-legacy:
	TF_USE_LEGACY_KERAS=1 $(PYTHON) -m pytest -q

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
