# Edit3DGS: the two commands are `make demo` and `make test`.
# .venv/         backend (torch, smplx, diffusers, ...)
# .venv-blender/ Blender side for tests (bpy + numpy<2), as in real use
PY ?= python3
VENV := .venv
BVENV := .venv-blender
BIN := $(VENV)/bin
OUT ?= demo_out
# CPU machines get the CPU build of torch, never the multi-GB CUDA stack.
TORCH_PIN := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
export HF_HUB_OFFLINE ?= 1

.PHONY: setup setup-blender demo test test-backend test-blender bench clean

$(BIN)/edit3dgs: backend/pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e "backend[diffusion,test]"
	touch $@

setup: $(BIN)/edit3dgs

$(BVENV)/.ok:
	$(PY) -m venv $(BVENV)
	$(BVENV)/bin/pip install -q "bpy==5.0.1" "numpy<2" pytest
	touch $@

setup-blender: $(BVENV)/.ok

# Blender 4.2 LTS (the oldest supported) for the install-and-register tests.
BVENV42 := .venv-blender42
$(BVENV42)/.ok:
	$(PY) -m venv $(BVENV42)
	$(BVENV42)/bin/pip install -q "bpy==4.2.*" "numpy<2" pytest
	touch $@

# The paper's method with the built-in Instruct-Pix2Pix (EDITOR=region: colour maps, no weights);
# ABLATION=1 adds the paper's ablation to the report (about 4x the time); PROMPT="..." changes the
# instruction (colours on hair, lips, eyes or skin: the built-in model's vocabulary is in its model card).
EDITOR ?= ip2p
PROMPT ?=
ABLATION ?=
demo: setup
	$(BIN)/edit3dgs demo --out $(OUT) --overwrite --editor $(EDITOR) $(if $(PROMPT),--prompt "$(PROMPT)") $(if $(ABLATION),--ablation)

test: setup
	$(BIN)/python -m pytest -q tests --ignore=tests/blender
	$(MAKE) test-blender

# The Blender extension: bpy headless in its own venv, the backend as a real subprocess.
BPY42_PYTHON ?= $(BVENV42)/bin/python
test-blender: setup-blender setup $(BVENV42)/.ok
	@echo "== install-and-register on Blender 4.2 LTS =="
	EDIT3DGS_BACKEND_PYTHON=$(abspath $(BIN))/python $(BPY42_PYTHON) -m pytest -q tests/blender/test_extension.py --confcutdir=tests/blender
	@echo "== the extension on Blender 5.0 =="
	EDIT3DGS_BACKEND_PYTHON=$(abspath $(BIN))/python $(BVENV)/bin/python -m pytest -q tests/blender --confcutdir=tests/blender

# demo.blend: the edited built-in avatar on its rig, keyframed to the held-out sequence, key views and a shot camera.
.PHONY: blend
blend: setup setup-blender
	EDIT3DGS_BACKEND_PYTHON=$(abspath $(BIN))/python $(BVENV)/bin/python scripts/make_blend.py --out demo.blend --work $(OUT)/blend

bench: setup
	$(BIN)/python benchmarks/render_bench.py

clean:
	rm -rf $(VENV) $(BVENV) $(BVENV42) $(OUT) dist
