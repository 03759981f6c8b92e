#!/bin/bash
# Submit the stages of an r1mega pipeline as a chain of Slurm jobs: each stage is one
# slurm/train.sbatch job that starts only when the previous one COMPLETED (--dependency=afterok).
# If a stage fails, the later ones are cancelled (--kill-on-invalid-dep=yes) instead of pending forever.
# A stage requeued by the time-limit trap keeps its job id, so the chain simply waits for it.
#
#   slurm/submit_pipeline.sh [OPTIONS] CONFIG STAGE[:NODES] [STAGE[:NODES] ...] [-- ARGS...]
#
#   slurm/submit_pipeline.sh configs/r1.yaml cold_start_sft:4 reasoning_rl:16 rejection_sft:4 -- seed=2
#
# Options:
#   --after JOBID        the first stage also waits for JOBID (afterok)
#   --sbatch-args "..."  extra sbatch options for every stage (also: $SBATCH_ARGS), e.g. "--time=12:00:00 -p batch"
#   --script PATH        sbatch script per stage (default: train.sbatch next to this file)
#   --dry-run            print the sbatch commands, submit nothing
# ARGS after `--` go to every stage after `CONFIG --stage NAME` (KEY=VALUE overrides).
# Prints one line per stage: "NAME JOBID". Run it from the directory the logs/ should go into.
set -eo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT=$HERE/train.sbatch
AFTER=""
DRY=0
read -r -a EXTRA <<< "${SBATCH_ARGS:-}"

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --after) AFTER=$2; shift 2 ;;
        --sbatch-args) read -r -a MORE <<< "$2"; EXTRA+=("${MORE[@]}"); shift 2 ;;
        --script) SCRIPT=$2; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage ;;
        --) break ;;
        -*) echo "submit_pipeline: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[[ $# -ge 2 ]] || usage
CONFIG=$1; shift
STAGES=()
while [[ $# -gt 0 && $1 != -- ]]; do STAGES+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
ARGS=("$@")
[[ ${#STAGES[@]} -gt 0 ]] || usage
[[ -f $SCRIPT ]] || { echo "submit_pipeline: no sbatch script $SCRIPT" >&2; exit 2; }

mkdir -p logs                                       # train.sbatch writes logs/%x-%j.out; Slurm will not create it
PREV=$AFTER
for spec in "${STAGES[@]}"; do
    NAME=${spec%%:*}
    NODES=""
    [[ $spec == *:* ]] && NODES=${spec#*:}
    CMD=(sbatch --parsable --job-name="r1mega-$NAME")
    [[ -n $NODES ]] && CMD+=(--nodes="$NODES")
    [[ -n $PREV ]] && CMD+=(--dependency="afterok:$PREV" --kill-on-invalid-dep=yes)
    CMD+=("${EXTRA[@]}" "$SCRIPT" "$CONFIG" --stage "$NAME" "${ARGS[@]}")
    if [[ $DRY == 1 ]]; then
        printf '%q ' "${CMD[@]}" >&2; echo >&2
        JOB="\$JOB_$NAME"
    else
        JOB=$("${CMD[@]}")
        JOB=${JOB%%;*}                              # "id;cluster" on multi-cluster setups
        echo "submitted stage $NAME as job $JOB${PREV:+ (after $PREV)}" >&2
    fi
    echo "$NAME $JOB"
    PREV=$JOB
done
