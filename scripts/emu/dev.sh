#!/usr/bin/env bash
# The dev harness (dev/cuda/targeted_dropout.cu: the v4 baseline dev/cuda/weight_v4.cu, the
# library's kernels/weight.cu as v5, grouped launch, bit-mask backward) built with g++ on the
# CUDA emulator and run with its own validation (`--emu`, the `--small` case set) against its
# CPU reference. No GPU, no CUDA toolkit. From anywhere:
#   bash scripts/emu/dev.sh [harness arguments]     (default --emu)
# Schedules rotate per launch (TD_EMU_ORDER / TD_EMU_RUNAHEAD / TD_EMU_WORKERS override).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/emu/build.sh dev
exec target/emu/dev/td "${@:---emu}"
