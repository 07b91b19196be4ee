# Quick start: `make demo` runs the main job, `make test` the test suite.
# Both set up .venv (pinned OpenMMLab stack, mmcv built with ops) first.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONHASHSEED := 0
export OMP_NUM_THREADS ?= 2

.PHONY: env demo demo-det test bench clean

env:
	bash tools/misc/setup_env.sh

demo: env
	$(PY) tools/demo.py --work-dir work_dirs/demo

test: env
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: env
	$(PY) tools/analysis/benchmark.py --out docs/benchmarks.json

clean:
	rm -rf work_dirs

demo-det: env
	$(PY) tools/demo_det.py --work-dir work_dirs/demo_det
