#!/bin/bash
# git bisect run helper: good (0) when seed 0's bundle evaluates at 11k and 12k steps exactly as at 41811d7
cd /tmp/bis
. /work/main/.venv/bin/activate
export OMP_NUM_THREADS=1 PYTHONPATH=.
out=/tmp/diag/bis-$(git rev-parse --short HEAD)
rm -rf $out
S="--algo sac --env HalfCheetah-v5 --seed 0 --n-timesteps 12000 --set eval_episodes=1 --set eval_freq=1000 --set n_steps=3 --set n_step_delay=15000 --set dynamic_buffer=True --set buffer_min_size=10000 --set buffer_check_interval=500"
if grep -q topology_kwargs sparse_rl/config.py 2>/dev/null || grep -rq topology_kwargs sparse_rl/topology/ 2>/dev/null; then
  M="--preset rigl --set sparsity=0.9 --set topology_kwargs.grow_signal=momentum --set topology_kwargs.rewire_dormant=True"
else
  M="--preset sparse_rl --set actor_sparsity=0.9 --set critic_sparsity=0.9 --set grow_signal='momentum' --set rewire_dormant=True"
fi
grep -q '"auto"' sparse_rl/agents/policies.py && M="$M --set backend=dense"
python -m sparse_rl.train $S $M --threads 1 --no-progress --run-dir $out > $out.log 2>&1 || { echo "$(git rev-parse --short HEAD) run failed"; tail -3 $out.log; exit 125; }
v=$(awk -F, 'NR>1 && ($1==11000 || $1==12000){printf "%.4f ", $3}' $out/evaluations.csv)
echo "$(git rev-parse --short HEAD) $v"
[ "$v" = "-9.7599 -19.7593 " ] && exit 0 || exit 1
