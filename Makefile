# One-command set-up: `make run` serves the sample corpus, `make test` runs the suite.
# Everything is installed into .venv; torch comes first as the CPU build so nothing pulls CUDA.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
QA      := $(VENV)/bin/qa
STAMP   := $(VENV)/.installed
PIP     := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: setup browser run index lint test stress bench train-reader train-retriever train-reranker settings clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $(STAMP)

# Headless Chromium for the browser test, from Debian (needs root, as in CI).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

index: setup
	$(QA) index

run: index
	$(QA) serve

lint: setup
	$(VENV)/bin/ruff check qa tests bench training

test: setup browser lint
	$(PY) -m pytest -q

# Rewrites the README's settings table from qa/config.py (a test fails when it is stale).
settings: setup
	$(PY) -m qa.config README.md

# The reliability tests with more trials: 20 killed builds, 5 killed uploads, longer load, 40 rounds of racing writers.
stress: setup
	QA_STRESS=1 $(PY) -m pytest -q -s tests/test_reliability.py tests/test_hostile.py tests/test_concurrent_writes.py

# Speed and scale figures (printed, and written to bench/results/); txtai is installed as the peer.
bench: setup
	$(PIP) -e '.[bench]'
	$(PY) bench/run.py

# The span reader (qa/readers/span.py) on all of SQuAD v1.1 train and the RealTimeQA training split
# (training/squad_reader.py, seed 13): writes qa/reader_weights/, then fits its score's calibration.
# Resumable: run it again after an interruption and it continues from .cache/reader-train/. One epoch
# took 5,179 s of training on the 2-core CPU (a GPU is used when torch sees one).
train-reader: setup
	$(PY) -m training.squad_reader train
	$(PY) -m training.calibrate fit

# The default embedding model (all-MiniLM-L6-v2-qa): both sides of the bundled model trained on
# SQuAD train and the older RealTimeQA weeks (training/dual_encoder.py, seed 13), writes
# qa/retriever_weights/. The shipped layers are 800 of the epoch's 922 batches, trained in two runs
# (300 batches, then 500 more from those layers: 3,094 s + 5,123 s on the 2-core CPU; a GPU is used
# when torch sees one); resumable from .cache/dual-encoder/. Every index is then rebuilt
# (`qa index --rebuild`).
train-retriever: setup
	$(PY) -m training.dual_encoder prepare
	$(PY) -m training.dual_encoder train --max-steps 300
	$(PY) -m training.dual_encoder train --init qa/retriever_weights --skip 300 --max-steps 500

# The cross-encoder reranker (qa/reranker.py, off by default; training/reranker.py, seed 13): mines
# hard negatives with the bundled model, then trains from the span reader's layers; writes
# qa/reranker_weights/. Resumable from .cache/reranker/; docs/evaluation.md has its CPU time.
train-reranker: setup
	$(PY) -m training.reranker prepare
	$(PY) -m training.reranker train --limit 6000 --negatives 5 --pool 10 --lr 4e-5

clean:
	rm -rf $(VENV) index/v* index/CURRENT index/eval
