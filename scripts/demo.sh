#!/usr/bin/env bash
# The main job on the embedded default: synthetic land cover -> H3 stencil
# (flow 00) -> training pairs (flow 01), all in the local bucket data/bucket.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./setup.sh
export USERNAME="${USERNAME:-${USER:-vectorgeo}}"
py=.venv/bin/python
res="${VG_H3_RESOLUTION:-7}"

$py flows/00_h3_stencil_flow.py --no-pylint run --h3_resolution="$res"
$py flows/01_preprocess_flow.py --no-pylint run --n_files=4 --n_jobs=2 --samples_per_file=1000

bucket="${VG_BUCKET:-data/bucket}"
echo
echo "demo done. Artifacts in $bucket:"
echo "  stencil:        $bucket/stencil/res$res.parquet"
echo "  training pairs: $bucket/train/${VG_TRAIN_SET:-default}/ (manifest.json, part-*.npz)"
echo "  rasters:        $bucket/rasters/synthetic-seed${VG_SYNTHETIC_SEED:-0}/"
