#!/usr/bin/env bash
# A seed of sparse_rl+all (HalfCheetah-v5, 90%, the stored runs' config and 150k-step schedule) with the
# storage of the two first layers forced, stopped once its evaluation at STOP steps is written.
#   usage (repository root, venv active): [SEED=0] [STOP=20000] docs/results/runs/bisect/storage_fingerprint.sh NAME ACTOR CRITIC
#   ACTOR, CRITIC: the break-even density written for the actor's 256x17 and the critics' 256x23 layers
#   (0.6: CSR at their ERK densities 0.35 and 0.41; 0.0: dense kernels). The 256x256 layers get 0.2 (CSR
#   at 0.044 and 0.068), the heads 0.0 (dense), as every cache of this project's machines had them.
# SEED (default 0) and STOP (default 20000; 150000 runs to the end) are read from the environment.
# Writes /tmp/storage-fp/NAME/evaluations.csv. The stored sweep run's 20k row is repeated by ACTOR=0.6,
# its CLI twin's (docs/results/runs/bisect/main-auto-cli-s0-stopped-50k) by ACTOR=0.0.
set -euo pipefail
name=$1 actor=$2 critic=$3 seed=${SEED:-0} stop=${STOP:-20000}
out=/tmp/storage-fp/$name
export SPARSE_RL_CACHE_DIR=$out-cache
mkdir -p "$SPARSE_RL_CACHE_DIR"
python - <<PY
import json, torch
torch.set_num_threads(1)  # the cache key names the thread count the run uses
from sparse_rl.sparse.backend import _key
shapes = {(256, 17): $actor, (256, 23): $critic, (256, 256): 0.2, (6, 256): 0.0, (1, 256): 0.0}
json.dump({_key(o, i, 256): v for (o, i), v in shapes.items()}, open("$SPARSE_RL_CACHE_DIR/break_even.json", "w"))
PY
python -m sparse_rl.train --algo sac --env HalfCheetah-v5 --seed $seed --n-timesteps 150000 --preset rigl --set sparsity=0.9 \
  --set topology_kwargs.grow_signal=momentum --set topology_kwargs.rewire_dormant=True --set n_steps=3 \
  --set n_step_delay=15000 --set dynamic_buffer=True --set buffer_min_size=10000 --set buffer_check_interval=500 \
  --set eval_episodes=10 --set backend=auto --threads 1 --no-progress --overwrite --run-dir "$out" > "$out.log" 2>&1 &
pid=$!
if [ "$stop" -ge 150000 ]; then
  wait $pid  # the whole run, summary included
else
  until grep -q "^$stop," "$out/evaluations.csv" 2>/dev/null; do
    kill -0 $pid 2>/dev/null || { tail -5 "$out.log"; exit 1; }
    sleep 5
  done
  kill -TERM $pid 2>/dev/null; wait $pid || true
fi
awk -F, -v s=$stop 'NR>1 && $1==s {print s ": return " $3 ", ITOP " $10 " / " $11 ", dormant " $16 " / " $17}' "$out/evaluations.csv"
