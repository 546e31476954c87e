#!/usr/bin/env bash
# The whole faithfulness study of docs/faithfulness.md in one command: both embedded models
# (SmolLM2-135M-Instruct, Gemma-3-270M) x both protocols (default, paper), all 200 LAMBADA
# passages, every scope and baseline, deletion AOPC and leave-one-out agreement.
#
#   benchmarks/faithfulness_study.sh [OUT] [PROCESSES] [DEADLINE_S]
#
# The four runs go at once, each under torchrun with PROCESSES ranks (default 2), so a GPU
# is shared by 4 x PROCESSES processes (the models are small: one process leaves the GPU
# idle between its kernels). With DEADLINE_S, runs still going after that many seconds are
# stopped; everything they finished is kept, and the tables are made from the passages they
# finished (--report-only). Rerunning the same command resumes. Results:
# OUT/<model>-<protocol>/ (default OUT: benchmarks/study), as bench_faithfulness.py writes them,
# and OUT/study.md, the four runs side by side (benchmarks/study_tables.py). The results files
# are kept gzipped beside them (results*.jsonl.gz, about 12 kB a passage, a quarter of the
# text); under benchmarks/study those are committed, so that a study of many hours resumes
# from a clone on any machine, not only on the one it started on.
set -u
cd "$(dirname "$0")/.."
out=${1:-benchmarks/study}
procs=${2:-2}
deadline=${3:-0}
python=${PYTHON:-python}
batch=${BATCH_SIZE:-64}
mkdir -p "$out"

# Dequantise both models once, before the ranks start (they would queue on one lock).
"$python" -c "from jacobian_scopes.default_model import default_checkpoint as d; d('smollm2-135m-instruct')" &
"$python" -c "from jacobian_scopes.default_model import default_checkpoint as d; d('gemma-3-270m')" &
wait

# Resume from the packed results where the unpacked ones are missing (a fresh clone).
for packed in "$out"/*/results*.jsonl.gz; do
    [ -f "$packed" ] && [ ! -f "${packed%.gz}" ] && gunzip -k "$packed"
done

pids=()
for model in smollm2-135m-instruct gemma-3-270m; do
    for protocol in default paper; do
        dir="$out/$model-$protocol"
        mkdir -p "$dir"
        limit=()
        [ "$deadline" -gt 0 ] && limit=(timeout --signal=TERM --kill-after=10 "$deadline")
        "${limit[@]}" "$python" -m torch.distributed.run --standalone --nproc-per-node "$procs" \
            benchmarks/bench_faithfulness.py --model "$model" --protocol "$protocol" \
            --metrics aopc loo --batch-size "$batch" --no-progress --out "$dir" \
            >"$dir/log.txt" 2>&1 &
        pids+=($!)
    done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for results in "$out"/*/results*.jsonl; do
    [ -f "$results" ] && gzip -k -f "$results"
done

# A run stopped by the deadline wrote no tables: make them from what it finished.
for dir in "$out"/*-default "$out"/*-paper; do
    [ -f "$dir/summary.md" ] && [ -f "$dir/results.jsonl" ] && continue
    model=${dir##*/}
    protocol=${model##*-}
    model=${model%-*}
    "$python" benchmarks/bench_faithfulness.py --model "$model" --protocol "$protocol" \
        --metrics aopc loo --out "$dir" --report-only >>"$dir/log.txt" 2>&1 || status=1
done
"$python" benchmarks/study_tables.py "$out" >/dev/null || status=1
exit $status
