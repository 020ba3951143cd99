#!/usr/bin/env bash
# What the paper does at scale that the default does not, on `val` (issue 19, item 4), beyond the
# prompts-per-iteration runs in README.md: more iterations, DPO's beta and learning rate, sampled
# evaluation. Seeds 0 and 1 of each setting (machine time); run after the val runs of README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
M=${M:-$PWD/multirun}
export OMP_NUM_THREADS=1   # two processes of one thread each on a 2-core machine
VAL="eval.at_base=false eval.shapesworld.split=val report.inspect=false logger.tracking_uri=null"
# iterations 4 and 5: seeds 0 and 1 of the 400-prompt runs, copied and continued (`iterations` is not a
# change of config: iteration k reads only iteration k - 1's outputs)
for s in 0 1; do
    [ -d "$M/val_iter5/$s" ] || { mkdir -p "$M/val_iter5"; cp -r "$M/val_limit400/$s" "$M/val_iter5/$s"; }
    # logger off: the copied MLflow store would still point at the original's artifacts
    csr run_dir="$M/val_iter5/$s" iterations=5 seed=$s data.limit=400 $VAL logger.enabled=false &
done; wait
# DPO's beta (default 0.1) and learning rate (default 1e-4), one setting at a time
for setting in dpo.beta=0.2 dpo.lr=2e-4; do  # one step up each (lr 3e-4 over-optimised in ../shapesworld_csr)
    name=${setting//[.=]/_}
    for s in 0 1; do csr run_dir="$M/val_$name/$s" seed=$s "$setting" $VAL & done; wait
done
# sampled evaluation (temperature 1, no top-k/top-p) of the base and the five 400-prompt models
python experiments/shapesworld_weak/other_split.py "$M/val_limit400" --split val --set eval.temperature=1.0 \
    --tag sampled --out experiments/shapesworld_default
python experiments/shapesworld_default/effect.py --base "$M/val_base" "400 prompts=$M/val_limit400" \
    "5 iterations=$M/val_iter5" "beta 0.2=$M/val_dpo_beta_0_2" \
    "lr 2e-4=$M/val_dpo_lr_2e-4" --out experiments/shapesworld_default/explore
