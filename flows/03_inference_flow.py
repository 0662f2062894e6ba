"""Flow 03: embed every stencil cell, in parallel, resumably.

Reads ``stencil/res{R}.parquet``, ``models/{name}.keras`` and the rasters;
writes ``embeddings/{name}/res{R}/part-{i}.parquet`` and a manifest.
"""

from metaflow import Parameter, card, current, resources, retry, step

import constants
from flow_support import RasterFlow, store_servers, user_errors
from vectorgeo.artifacts import embeddings_prefix
from vectorgeo.cards import inference_card
from vectorgeo.jobs.infer import finish_inference, plan_inference, run_inference


class InferenceFlow(RasterFlow):
    """Chunked, batched inference; parts already written by the same model are skipped."""

    model_filename = Parameter("model_filename", help="Model file name under models/", default=constants.MODEL_FILENAME)
    h3_resolution = Parameter(
        "h3_resolution", help="Stencil resolution to embed", type=int, default=constants.H3_RESOLUTION
    )
    max_iters = Parameter("max_iters", help="Embed at most this many parts (smoke runs); 0 = all", type=int, default=0)
    inference_batch_size = Parameter("inference_batch_size", help="Cells per forward pass", type=int, default=512)
    chunk_size = Parameter("chunk_size", help="Stencil cells per part (one Parquet file)", type=int, default=20000)
    n_workers = Parameter(
        "n_workers",
        help="Parallel workers, 1..100; each embeds several parts",
        type=int,
        default=constants.INFERENCE_WORKERS,
    )
    qdrant_collection = Parameter(
        "qdrant_collection",
        help="Also upsert each part into this Qdrant collection as it is written (QDRANT_URL, else Qdrant Edge "
        "in VG_DATA_DIR, which needs --n_workers=1); empty = no upsert (flow 04 loads the stores)",
        default="",
    )
    wipe_qdrant = Parameter("wipe_qdrant", help="Drop that collection first", type=bool, default=False)
    dem = Parameter(
        "dem",
        help="DEM: local path or bucket key; empty = synthetic DEM with synthetic land cover",
        default=constants.DEM,
    )

    def _qdrant(self) -> dict | None:
        """Where to upsert as parts are written; built per step, never kept as an artifact (it holds the API key)."""
        if not self.qdrant_collection:
            return None
        servers = store_servers(["qdrant"])
        return {
            "collection": self.qdrant_collection,
            "data_dir": servers["data_dir"],
            "url": servers["qdrant_url"],
            "api_key": servers["qdrant_api_key"],
            "wipe": self.wipe_qdrant,
        }

    @step
    def start(self):
        """Check model, legend and stencil once; split the work."""
        with user_errors():
            self.workers = plan_inference(
                self.step_bucket("start"),
                model_filename=self.model_filename,
                h3_resolution=self.h3_resolution,
                chunk_size=self.chunk_size,
                n_workers=self.n_workers,
                max_iters=self.max_iters,
                legend=self.legend,
                landcover=self.landcover,
                synthetic_seed=self.synthetic_seed,
                qdrant=self._qdrant(),
            )
        self.n_parts = sum(len(w) for w in self.workers)
        self.next(self.infer, foreach="workers")

    @retry(times=2)
    @resources(cpu=2, memory=8000)
    @step
    def infer(self):
        """Embed this worker's parts (skipping finished ones)."""
        with user_errors():
            self.result = run_inference(
                self.step_bucket("infer"),
                self.input,
                model_filename=self.model_filename,
                h3_resolution=self.h3_resolution,
                batch_size=self.inference_batch_size,
                landcover=self.landcover,
                dem=self.dem,
                legend=self.legend,
                synthetic_seed=self.synthetic_seed,
                qdrant=self._qdrant(),
            )
        self.next(self.join)

    @card(type="blank")
    @step
    def join(self, inputs):
        """Check every part arrived; write the manifest."""
        self.merge_artifacts(inputs, include=["n_parts"])
        with user_errors():
            self.manifest = finish_inference(
                self.step_bucket("join"),
                [i.result for i in inputs],
                model_filename=self.model_filename,
                h3_resolution=self.h3_resolution,
                n_parts=self.n_parts,
                qdrant=self._qdrant(),
            )
        current.card.extend(inference_card(self.manifest))
        self.next(self.end)

    @step
    def end(self):
        """Say where the embeddings are."""
        m = self.manifest
        print(
            f"embeddings: {m['n_embedded']} cells ({m['n_invalid']} invalid patches skipped, "
            f"{m['n_parts_skipped']} of {m['n_parts']} parts reused) "
            f"-> {embeddings_prefix(m['model'], m['h3_resolution'])}"
        )


if __name__ == "__main__":
    InferenceFlow()
