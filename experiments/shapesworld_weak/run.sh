#!/usr/bin/env bash
# The weak-CLIP lambda study (issue 19): lambda {0.9, 1, 0, 0.5} x seeds 0-4 x 3 iterations, evaluated on
# `test`, then every run's last model on `fresh` (a world seed range nothing was tuned or trained on).
# Seed-major order: each seed finishes its four lambdas before the next starts, so any prefix is paired.
# The study's settings are pinned (200 prompts per iteration, 2 DPO epochs: the default run's when the
# study began), so a later change of the defaults does not move it.
set -euo pipefail
cd "$(dirname "$0")/../.."
M=${M:-$PWD/multirun}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=1   # JOBS processes of one thread each on a 2-core machine
csr -m hydra/launcher=parallel hydra.launcher.n_jobs="$JOBS" reward=shapesworld_weak seed=0,1,2,3,4 \
    reward.lam=0.9,1.0,0,0.5 data.limit=200 dpo.epochs=2 eval.at_base=false report.inspect=false \
    logger.tracking_uri=null hydra.sweep.dir="$M/shapesworld_weak"
# the base model on test (iteration 0 of every row; greedy, whatever the reward)
[ -f "$M/test_base/iter_0/eval.done.json" ] || \
    csr stage=eval iteration=0 run_dir="$M/test_base" logger.tracking_uri=null report.inspect=false
python experiments/shapesworld_csr/aggregate.py "$M/shapesworld_weak" --base "$M/test_base" --out experiments/shapesworld_weak
python experiments/shapesworld_weak/claims.py "$M/shapesworld_weak" --base "$M/test_base" > experiments/shapesworld_weak/claims.md
python experiments/shapesworld_weak/other_split.py "$M/shapesworld_weak" --split fresh --out experiments/shapesworld_weak
