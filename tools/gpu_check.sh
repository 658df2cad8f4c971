#!/usr/bin/env bash
# The GPU check of issue 18: tests on CUDA, the benchmark, a short seed-preset training,
# CPU vs GPU losses. Runs on a bare machine with Python and PyTorch (moelab not installed,
# no network, no Jupyter): everything it measures goes to OUTDIR (8 files at most).
#
#   tools/gpu_check.sh OUTDIR [--cpu-smoke] [--dataset DIR] [--budget-s SECONDS]
#
# --cpu-smoke: the same steps on the CPU with tiny sizes (about a minute), to check the script.
# The dataset defaults to data/processed/machado (a prepared moelab dataset); when missing, a
# small synthetic byte dataset is built instead, and the log says so.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" tools/gpu_check.py "$@"
