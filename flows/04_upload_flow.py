"""Flow 04: load the embeddings into the vector stores, one store per worker.

Reads ``embeddings/{name}/res{R}/``; writes Qdrant (a server via QDRANT_URL, or
Qdrant Edge in VG_DATA_DIR), PostgreSQL + pgvector (DATABASE_URL, or an
embedded PostgreSQL in VG_DATA_DIR) and FAISS files (``indexes/{name}/res{R}/``
in the bucket), then the search sidecars (``indexes/{name}/res{R}/search/``: score
calibration and per-cell attributes for the search service).
"""

from metaflow import Parameter, card, current, resources, retry, step

import constants
from flow_support import VectorGeoFlow, VectorGeoFlowError, store_servers, user_errors
from vectorgeo.artifacts import collection_name, model_name
from vectorgeo.cards import upload_card
from vectorgeo.jobs.upload import load_store, plan_upload, write_search_sidecars


class UploadFlow(VectorGeoFlow):
    """Idempotent, resumable loads keyed by H3 id; counts per store at the end."""

    stores = Parameter("stores", help="Comma-separated: qdrant,pgvector,faiss", default="qdrant,pgvector,faiss")
    model_filename = Parameter(
        "model_filename", help="Model whose embeddings to load", default=constants.MODEL_FILENAME
    )
    h3_resolution = Parameter(
        "h3_resolution", help="Resolution of the embeddings", type=int, default=constants.H3_RESOLUTION
    )
    qdrant_collection = Parameter(
        "qdrant_collection", help="Qdrant collection and pgvector table name; empty = {model}_res{R}", default=""
    )
    wipe_qdrant = Parameter("wipe_qdrant", help="Drop the Qdrant collection before loading", type=bool, default=False)
    wipe_existing = Parameter(
        "wipe_existing",
        help="DESTRUCTIVE: drop and recreate the pgvector table first; give the table's name as the value to confirm "
        "(--wipe_existing=demo_res7)",
        default="",
    )
    max_rows_upload = Parameter(
        "max_rows_upload", help="Load at most this many rows per store; 0 = all", type=int, default=0
    )

    def _collection(self) -> str:
        """The Qdrant collection / pgvector table: given, or ``{model}_res{R}`` as a safe identifier."""
        return self.qdrant_collection or collection_name(model_name(self.model_filename), self.h3_resolution)

    @step
    def start(self):
        """Check the store list and the embeddings; one worker per store."""
        with user_errors():
            self.kinds = plan_upload(
                self.step_bucket("start"),
                stores=self.stores,
                model_filename=self.model_filename,
                h3_resolution=self.h3_resolution,
                collection=self._collection(),
            )
        if self.wipe_existing and self.wipe_existing != self._collection():
            raise VectorGeoFlowError(
                f"--wipe_existing drops a table and all its rows: to drop {self._collection()!r}, confirm by naming it "
                f"(--wipe_existing={self._collection()}); got {self.wipe_existing!r}"
            )
        if self.wipe_existing and "pgvector" in self.kinds:
            print(f"WARNING: dropping the pgvector table {self._collection()!r} and all its rows before loading")
        self.next(self.load, foreach="kinds")

    @retry(times=2)
    @resources(cpu=2, memory=8000)
    @step
    def load(self):
        """Stream every part into this store, then build its indexes."""
        kind = self.input
        with user_errors():
            self.result = load_store(
                self.step_bucket("load"),
                kind,
                model_filename=self.model_filename,
                h3_resolution=self.h3_resolution,
                collection=self._collection(),
                wipe=(kind == "qdrant" and self.wipe_qdrant) or (kind == "pgvector" and bool(self.wipe_existing)),
                max_rows=self.max_rows_upload,
                **store_servers([kind]),
            )
        self.next(self.join)

    @card(type="blank")
    @step
    def join(self, inputs):
        """Counts per store."""
        self.counts = {i.result["store"]: i.result for i in inputs}
        current.card.extend(upload_card(self.counts))
        self.next(self.search_sidecars)

    @retry(times=2)
    @resources(cpu=1, memory=8000)
    @step
    def search_sidecars(self):
        """Score calibration and per-cell attributes for the search service (skipped when current)."""
        with user_errors():
            self.sidecars = write_search_sidecars(
                self.step_bucket("search_sidecars"),
                model_filename=self.model_filename,
                h3_resolution=self.h3_resolution,
            )
        self.next(self.end)

    @step
    def end(self):
        """Print the counts."""
        for kind, r in self.counts.items():
            loaded, reused = r["parts_loaded"], r["parts_skipped"]
            print(f"{kind}: {r['count']} rows in {r['collection']} ({loaded} parts loaded, {reused} reused)")
        s = self.sidecars
        state = "reused" if s["skipped"] else "built"
        print(f"search sidecars: {s['count']} cells, {s['n_pairs']} calibration pairs in {s['prefix']} ({state})")


if __name__ == "__main__":
    UploadFlow()
