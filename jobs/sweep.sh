#!/usr/bin/env bash
# A whole dataspex study on a Slurm cluster, typed on the login node; no sbatch script to write.
# Hydra's submitit launcher submits one job array (one task per shard), waits for it, and reports failures.
#
#   RUN_DIR=/shared/$USER/dataspex/study1 SHARDS=32 PARTITION=cpu bash jobs/sweep.sh [overrides...]
#   # GPU partition: one GPU per shard, many adapters per pass
#   RUN_DIR=... SHARDS=8 LAUNCHER=slurm_gpu PARTITION=gpu CPUS=8 MEM_GB=32 bash jobs/sweep.sh
#
# Settings (environment):
#   RUN_DIR    the run directory, on a filesystem the compute nodes share (required)
#   SHARDS     array tasks the masks are spread over (16)
#   PARTITION  Slurm partition (the cluster's default)
#   CPUS       CPUs per job, also the torch threads of each job (4)
#   MEM_GB     memory per job in GB (8);  TIME_MIN  time limit per job in minutes (240)
#   PARALLEL   at most this many shards at once (64);  LAUNCHER  slurm | slurm_gpu (slurm)
# Overrides after the script name create the run (model=..., data=..., design.m=...) and are replayed by
# every later stage. Keep the driver alive (tmux/screen or nohup): if it dies, the jobs still finish.
#
# Safe to run again at any time, e.g. after preemption, scancel, a node failure or a logout: done masks are
# skipped, and only the missing ones are trained. Check `squeue --me` first: a second driver while the first
# one's jobs still run only wastes compute (duplicate results are collapsed).
set -euo pipefail
: "${RUN_DIR:?set RUN_DIR to a directory on a filesystem shared with the compute nodes}"
SHARDS=${SHARDS:-16} CPUS=${CPUS:-4} MEM_GB=${MEM_GB:-8} TIME_MIN=${TIME_MIN:-240} PARALLEL=${PARALLEL:-64}
LAUNCHER=${LAUNCHER:-slurm}
slurm=(hydra/launcher="$LAUNCHER" hydra.launcher.cpus_per_task="$CPUS" hydra.launcher.mem_gb="$MEM_GB"
       hydra.launcher.timeout_min="$TIME_MIN" hydra.launcher.array_parallelism="$PARALLEL")
[ -n "${PARTITION:-}" ] && slurm+=(hydra.launcher.partition="$PARTITION")

# 1. the design and fingerprint (seconds, on the login node; refuses a different design or config in RUN_DIR)
dataspex design run_dir="$RUN_DIR" "$@"

# 2. the retraining: one Slurm job array, shard i of SHARDS in task i
if ! dataspex train --multirun run_dir="$RUN_DIR" "${slurm[@]}" shard.count="$SHARDS" "shard.index=range(0,$SHARDS)" \
        train.threads="$CPUS" progress=false "$@"; then
  dataspex status run_dir="$RUN_DIR" shard.count="$SHARDS" || true
  echo "jobs failed or were cancelled (logs: $RUN_DIR/sweeps/<time>/.submitit/); run this script again to finish" >&2
  exit 1
fi
dataspex status run_dir="$RUN_DIR" shard.count="$SHARDS"

# 3. one table of all results (RUN_DIR/results.parquet), then fit + report as one more job on the cluster
dataspex collect run_dir="$RUN_DIR" "$@"
for stage in fit report; do
  dataspex "$stage" --multirun run_dir="$RUN_DIR" "${slurm[@]}" "$@"
done
echo "report: $RUN_DIR/report/report.md"
