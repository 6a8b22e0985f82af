# One-command set-up: `make run` serves the sample corpus, `make test` runs the suite.
# Everything is installed into .venv from the lock file (requirements.lock): exact versions and
# hashes of every package, the CPU build of torch among them, so nothing pulls CUDA and a release
# made tomorrow changes nothing here. `make lock` regenerates it; `make test-latest` tries tomorrow's.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
QA      := $(VENV)/bin/qa
STAMP   := $(VENV)/.installed
LOCK    := requirements.lock
PIP     := $(PY) -m pip install --quiet --disable-pip-version-check
# pip-tools writes the lock (pip's own resolver, so torch resolves to the CPU wheel as pip does).
PIP_TOOLS := pip-tools==7.7.0
LOCK_VENV := .cache/lock-venv
LATEST_VENV := .cache/latest-venv
# The CPU build of torch that requirements.in pins (a newer torch from PyPI is a CUDA build).
TORCH   := $(shell sed -n 's/^torch==//p' requirements.in)

.PHONY: setup browser run index lint test test-latest lock stress bench eval-news train-reader train-retriever train-reranker settings clean

setup: $(STAMP)

# The lock as it is (pip checks every hash and that nothing is missing), then the project itself
# without dependencies: the lock already holds them, the build backend (hatchling) included.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes -r $(LOCK)
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Regenerates the lock from pyproject.toml's ranges and requirements.in (torch, pip): the newest
# releases that fit. Then `make test`, and commit both if it passes.
lock:
	test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(PIP_TOOLS)
	$(LOCK_VENV)/bin/pip-compile --quiet --upgrade --allow-unsafe --generate-hashes --strip-extras --extra test --extra milvus \
		--no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml requirements.in

# Headless Chromium for the browser test, from Debian (needs root, as in CI).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

index: setup
	$(QA) index

run: index
	$(QA) serve

lint: setup
	$(VENV)/bin/ruff check qa tests bench training

# The suite's temporary files (pytest's folders, Milvus Lite's logs and sockets, Chromium's profile)
# go to a folder of its own, removed afterwards: a run leaves nothing in the system's /tmp.
test: setup browser lint
	@tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/qa-test.XXXXXX"); TMPDIR=$$tmp $(PY) -m pytest -q; rc=$$?; rm -rf "$$tmp"; exit $$rc

# Tomorrow's releases, before a user meets them: a throwaway venv with the newest versions that
# pyproject.toml allows (the CPU torch of requirements.in), the suite, then what differs from the
# lock. Not part of `make test`; when it passes, `make lock` takes the new versions.
test-latest: browser
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check torch==$(TORCH)
	$(LATEST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,milvus]'
	@tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/qa-test.XXXXXX"); \
	$(LATEST_VENV)/bin/ruff check qa tests bench training && UNLOCKED=1 TMPDIR=$$tmp $(LATEST_VENV)/bin/python -m pytest -q; rc=$$?; rm -rf "$$tmp"; \
	$(LATEST_VENV)/bin/python -m tests.lockfile $(LOCK); \
	echo "test-latest: the suite $$( [ $$rc = 0 ] && echo passed || echo FAILED ) on the versions above"; exit $$rc

# Rewrites docs/settings.md and the README's table of user settings from qa/config.py (a test fails when they are stale).
settings: setup
	$(PY) -m qa.config README.md docs/settings.md

# The reliability tests with more trials: 20 killed builds, 5 killed uploads, longer load, 40 rounds of racing writers.
stress: setup
	QA_STRESS=1 $(PY) -m pytest -q -s tests/test_reliability.py tests/test_hostile.py tests/test_concurrent_writes.py

# Speed and scale figures (printed, and written to bench/results/); txtai is installed as the peer.
bench: setup
	$(PIP) -e '.[bench]'
	$(PY) bench/run.py

# The news evaluation at scale (training/news_eval.py): RealTimeQA's dated evidence mixed into news_2022
# and bbc_news, each question asked as of its quiz date, the newest weeks held out, each part on and
# off, the abstention curve, and squad11_dev13 beside it. The index is built once into .cache/news-eval/.
eval-news: setup
	$(PY) -m training.news_eval --split held-out --json bench/results/news-eval.json

# The span reader (qa/readers/span.py) on all of SQuAD v1.1 train and the RealTimeQA training split
# (training/squad_reader.py, seed 13): writes qa/reader_weights/, then fits its score's calibration.
# Resumable: run it again after an interruption and it continues from .cache/reader-train/. One epoch
# took 5,179 s of training on the 2-core CPU (a GPU is used when torch sees one).
train-reader: setup
	$(PY) -m training.squad_reader train --out qa/reader_weights
	$(PY) -m training.calibrate fit --out qa/reader_weights

# The default embedding model (all-MiniLM-L6-v2-qa): both sides of the bundled model trained on
# SQuAD train and the older RealTimeQA weeks (training/dual_encoder.py, seed 13), writes
# qa/retriever_weights/. The shipped layers are 800 of the epoch's 922 batches, trained in two runs
# (300 batches, then 500 more from those layers: 3,094 s + 5,123 s on the 2-core CPU; a GPU is used
# when torch sees one); resumable from .cache/dual-encoder/. Every index is then rebuilt
# (`qa index --rebuild`).
train-retriever: setup
	$(PY) -m training.dual_encoder prepare
	$(PY) -m training.dual_encoder train --max-steps 300 --out qa/retriever_weights
	$(PY) -m training.dual_encoder train --init qa/retriever_weights --skip 300 --max-steps 500 --out qa/retriever_weights

# The cross-encoder reranker (qa/reranker.py, off by default; training/reranker.py, seed 13): mines
# hard negatives with the bundled model, then trains from the span reader's layers; writes
# qa/reranker_weights/. Resumable from .cache/reranker/; docs/evaluation.md has its CPU time.
train-reranker: setup
	$(PY) -m training.reranker prepare
	$(PY) -m training.reranker train --limit 6000 --negatives 5 --pool 10 --lr 4e-5 --out qa/reranker_weights

clean:
	rm -rf $(VENV) $(LOCK_VENV) $(LATEST_VENV) index/v* index/CURRENT index/eval
