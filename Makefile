# The test command of the README: the suite under Keras 3, then under legacy tf-keras.
PYTHON ?= python

.PHONY: test test-keras3 test-legacy bench

test: test-keras3 test-legacy

test-keras3:
	$(PYTHON) -m pytest -q

test-legacy:
	TF_USE_LEGACY_KERAS=1 $(PYTHON) -m pytest -q

bench:
	$(PYTHON) bench/bench_gradcam.py
	$(PYTHON) bench/bench_scorecam.py
	$(PYTHON) bench/bench_callback.py
	$(PYTHON) bench/bench_dataset.py
	$(PYTHON) bench/bench_build.py
	$(PYTHON) bench/bench_quality.py
