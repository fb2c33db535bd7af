#!/usr/bin/env bash
# The test command (README, "Tests"): from a fresh clone, build what the tests need and run them all.
#
#   bash tests/run.sh [pytest arguments, e.g. -k client or tests/pbe_core/edit/test_sampling.py]
#
# 1. ComfyUI: $COMFYUI_PATH if it is set; else the ComfyUI tree shipped beside the project
#    (../shared/host/ComfyUI-*.tar.gz), unpacked into .host/. With neither, the host tests skip and say why.
# 2. .venv-host: the Python ComfyUI runs on (torch 2.14.1 + torchvision 0.29.1, ComfyUI's requirements.txt) plus the
#    pack's requirements.txt and its test extra (pyproject.toml). Every test runs in it, the host suite included,
#    with PBE_STRICT_SKIPS=1: a test that skips is a failure unless tests/conftest.py's ALLOWED_SKIPS names it.
#    Then, with a ComfyUI, the newer-host mode (PBE_NEWER_HOST=1, tests/support/newer_host_emulation.py): loading,
#    the one-node edit, the modular graph and bf16 again, with 0.38-era host behaviours reproduced on that ComfyUI.
# 3. transformers 4: loading, the encoder and the converter again under transformers 4.57 (CLIP's weights are named
#    differently there), with diffusers 0.35.2 as the oracle (diffusers 0.42 needs huggingface-hub >= 1, which
#    transformers 4 does not accept).
# 4. The lowest Python version pyproject.toml claims: the tests of the standard-library parts (pytest.mark.stdlib:
#    the headless client, the converter's and the trainer's front ends).
#
# The virtual environments are kept between runs and refreshed when the files that list their packages change; delete
# them (.venv-host, .venv-transformers4, .venv-py3*) to start over. Nothing is downloaded at test time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

export OMP_WAIT_POLICY=PASSIVE  # spinning OpenMP threads make torch 10-25x slower on a shared machine
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export PIP_DISABLE_PIP_VERSION_CHECK=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

PY=${PYTHON:-python3}
say() { printf '\n== %s\n' "$*" >&2; }

# venv DIR STAMP_TEXT INSTALL_COMMAND...: create DIR and run the install command in it unless it already ran with the
# same stamp text (the contents of the files that list the packages)
venv() {
  local dir=$1 stamp=$2
  shift 2
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.pbe-stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  rm -rf "$dir"
  "$PY_FOR_VENV" -m venv "$dir"
  "$@"
  printf '%s' "$stamp" >"$dir/.pbe-stamp"
}

# the test extra of pyproject.toml, one requirement per line (tomllib from 3.11, pip's own TOML reader before)
test_extra() {
  "$1" - <<'EOF'
try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["test"]))
EOF
}

# --- 1. ComfyUI -----------------------------------------------------------------------------------------------------
if [ -z "${COMFYUI_PATH:-}" ]; then
  tarball=$(ls "$ROOT"/../shared/host/ComfyUI-*.tar.gz 2>/dev/null | sort | tail -n 1 || true)
  if [ -n "$tarball" ]; then
    if [ ! -f .host/ComfyUI/main.py ] || [ "$(cat .host/.tarball 2>/dev/null)" != "$(basename "$tarball")" ]; then
      say "unpacking $(basename "$tarball") into .host/"
      rm -rf .host && mkdir -p .host
      tar -xzf "$tarball" -C .host
      basename "$tarball" >.host/.tarball
    fi
    export COMFYUI_PATH=$ROOT/.host/ComfyUI
  else
    say "no ComfyUI (set COMFYUI_PATH, or put the host tarball in ../shared/host/): the host tests will skip"
  fi
fi

# --- 2. the host's Python, and every test ---------------------------------------------------------------------------
HOST_REQS=${COMFYUI_PATH:+$COMFYUI_PATH/requirements.txt}
install_host() {
  local pip=(.venv-host/bin/pip install -q)
  "${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
  if [ -n "$HOST_REQS" ]; then
    # requests: ComfyUI's frontend manager imports it without listing it
    "${pip[@]}" -r "$HOST_REQS" requests
  fi
  mapfile -t extra < <(test_extra .venv-host/bin/python)
  "${pip[@]}" -r requirements.txt "${extra[@]}"
}
PY_FOR_VENV=$PY
say "test environment .venv-host"
venv .venv-host "$(cat requirements.txt pyproject.toml ${HOST_REQS:+"$HOST_REQS"})" install_host
say "all tests${COMFYUI_PATH:+ (host: $COMFYUI_PATH)}"
PBE_STRICT_SKIPS=1 PBE_TEST_DDP=1 PBE_TRAIN_PYTHON=$ROOT/.venv-host/bin/python \
  .venv-host/bin/python -m pytest -q "$@"

if [ $# -gt 0 ]; then
  exit 0  # a selection of tests was asked for: the other Python environments are not part of it
fi
if [ -n "${COMFYUI_PATH:-}" ]; then
  say "newer-host mode: loading, the one-node edit, the modular graph and bf16 (tests/support/newer_host_emulation.py)"
  PBE_NEWER_HOST=1 PBE_STRICT_SKIPS=1 .venv-host/bin/python -m pytest -q -p no:cacheprovider \
    tests/host/test_newer_host_host.py::test_in_process_host_runs_in_the_mode_asked_for \
    tests/host/test_newer_host_host.py::test_session_server_runs_in_the_mode_asked_for \
    tests/host/test_inprocess_host.py::test_loaded_weights_are_the_checkpoint_tensors \
    tests/host/test_inprocess_host.py::test_half_precision_file_is_cast_to_the_model_dtype \
    tests/host/test_inprocess_host.py::test_fast_path_whole_edit_matches \
    tests/host/test_inprocess_host.py::test_bf16_edit_takes_the_fast_paths_and_stays_near_fp32 \
    tests/host/test_inprocess_host.py::test_bf16_with_amx_computes_every_network_in_bf16 \
    tests/host/test_nodes_host.py::test_every_graph_runs_for_every_layout \
    tests/host/test_nodes_host.py::test_reference_sampler_matches_diffusers_pipeline \
    tests/host/test_nodes_host.py::test_modular_graph_samples_what_the_paper_samples \
    tests/host/test_bad_inputs_host.py::test_bad_model_files tests/host/test_bad_inputs_host.py::test_fixture_model_still_loads
fi

# --- 3. transformers 4 ----------------------------------------------------------------------------------------------
install_transformers4() {
  .venv-transformers4/bin/pip install -q "torch==2.13.0"
  .venv-transformers4/bin/pip install -q --only-binary=:all: "transformers==4.57.6" "huggingface-hub<1.0" \
    "diffusers==0.35.2" safetensors einops numpy tqdm "pytest>=8" "hypothesis>=6" pillow scikit-image
}
T4_PACKAGES="transformers==4.57.6 huggingface-hub<1.0 diffusers==0.35.2 torch==2.13.0 scikit-image"
say "transformers 4: loading, encoder, converter"
venv .venv-transformers4 "$T4_PACKAGES" install_transformers4
PBE_STRICT_SKIPS=1 PBE_FIXTURE_DIR="$ROOT/tests/.fixtures-transformers4" .venv-transformers4/bin/python -m pytest -q \
  tests/pbe_core/weights/test_checkpoint.py tests/pbe_core/exemplar/test_exemplar_encoder.py tests/pbe_core/test_convert.py

# --- 4. the lowest Python claimed -----------------------------------------------------------------------------------
MIN_PY=$(sed -n 's/^requires-python = ">=\([0-9]*\.[0-9]*\)".*/\1/p' pyproject.toml)
# pyenv's own folder first: its shim on PATH answers "command not found" unless that version is selected
OLD_PY=
for candidate in $(ls "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$MIN_PY".*/bin/python"$MIN_PY" 2>/dev/null | sort -V -r) \
  $(command -v "python$MIN_PY" || true); do
  if "$candidate" -c 'import sys' >/dev/null 2>&1; then
    OLD_PY=$candidate
    break
  fi
done
if [ -z "$OLD_PY" ]; then
  msg="Python $MIN_PY (pyproject.toml's requires-python) is not installed: its standard-library tests did not run"
  if [ "${CI:-}" = "1" ]; then
    echo "error: $msg" >&2
    exit 1
  fi
  say "warning: $msg"
  exit 0
fi
install_old() {
  ".venv-py$MIN_PY/bin/pip" install -q "pytest>=8" numpy pillow  # numpy and Pillow: oracles of the client tests
}
PY_FOR_VENV=$OLD_PY
say "Python $MIN_PY: the standard-library tests"
venv ".venv-py$MIN_PY" "$OLD_PY" install_old
PBE_STRICT_SKIPS=1 ".venv-py$MIN_PY/bin/python" -m pytest -q -p no:cacheprovider tests
