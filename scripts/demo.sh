#!/usr/bin/env bash
# The main job on the embedded default, all in the local bucket data/bucket:
# synthetic land cover -> H3 stencil (00) -> training pairs (01) -> encoder
# (02) -> embeddings of every land cell (03) -> Qdrant, pgvector and FAISS (04)
# -> evaluation on held-out ground (05).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./setup.sh
export USERNAME="${USERNAME:-${USER:-vectorgeo}}"
py=.venv/bin/python
res="${VG_H3_RESOLUTION:-7}"
model="${VG_MODEL:-demo.keras}"

$py flows/00_h3_stencil_flow.py --no-pylint run --h3_resolution="$res"
$py flows/01_preprocess_flow.py --no-pylint run --n_files=16 --n_jobs=2 --samples_per_file=640
$py flows/02_train_flow.py --no-pylint run
$py flows/03_inference_flow.py --no-pylint run --h3_resolution="$res"
$py flows/04_upload_flow.py --no-pylint run --h3_resolution="$res"
$py flows/05_evaluate_flow.py --no-pylint run --h3_resolution="$res"

bucket="${VG_BUCKET:-data/bucket}"
echo
echo "demo done. Artifacts in $bucket:"
echo "  stencil:        $bucket/stencil/res$res.parquet"
echo "  training pairs: $bucket/train/${VG_TRAIN_SET:-default}/ (manifest.json, part-*.npz)"
echo "  model:          $bucket/models/${model%.keras}.keras (+ .json sidecar, .png diagnostics)"
echo "  embeddings:     $bucket/embeddings/${model%.keras}/res$res/ (part-*.parquet, manifest.json)"
echo "  stores:         ${VG_DATA_DIR:-data/stores}/ (Qdrant Edge, embedded PostgreSQL), $bucket/indexes/ (FAISS)"
echo "  evaluation:     $bucket/reports/${model%.keras}/res$res/evaluation.json (+ .png)"
echo "  rasters:        $bucket/rasters/ (the synthetic default)"
if [ "${VG_DEMO_SERVE:-1}" = 0 ]; then  # e.g. on a machine where nobody will look at the map
  exit 0
fi
echo
echo "Starting the server: the search API under /api/ and the web map, on worker processes (Ctrl-C stops it)."
exec .venv/bin/vectorgeo serve --resolution "$res" --model "$model" --port "${VG_PORT:-8000}"
