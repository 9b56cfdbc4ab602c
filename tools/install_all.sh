#!/usr/bin/env bash
# Install lskd-bench with every extra (test, nmt, slurm, tensorboard, wandb, mlflow, report) into the active Python environment.
#
# fairseq-fixed (a fork of fairseq 0.12 that installs on Python 3.11) ships as an sdist with Cython
# extensions. pip's default isolated build installs a second torch into a throw-away build environment
# (~400 s); building it without isolation against the torch already installed takes ~2 min.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -e ".[test]"
pip install cython wheel "setuptools>=64" "numpy>=1.24"
pip install --no-build-isolation "fairseq-fixed==0.12.3.1"
# mlflow: pinned in pyproject (mlflow==3.17.2, client and `mlflow ui` server of one version)
pip install -e ".[test,nmt,slurm,tensorboard,wandb,mlflow,report]"
