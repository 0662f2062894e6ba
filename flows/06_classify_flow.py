"""Flow 06: from labelled places to a map of classes.

Reads a label file (GeoJSON points or polygons, or CSV; a local path or a bucket key) and the
embeddings of flow 03; writes ``classifiers/{clf}/{version}.skops`` + ``.json`` (the model, safe to
load, and its blocked cross-validation beside the class-histogram baseline; the version names the
inputs, so a rerun reuses it and new labels never overwrite it), then
``predictions/{clf}/{version}/res{R}/``: parts, ``predictions.parquet`` (GeoParquet), ``classes.tif`` (COG),
an optional probability COG, ``summary.json``; and records model and map in the registry
(``ml_models``, ``raster_predictions`` in DATABASE_URL, or the embedded PostgreSQL).
"""

import re
from pathlib import Path

from metaflow import Parameter, card, current, resources, retry, step

import constants
from flow_support import VectorGeoFlow, store_servers, user_errors
from vectorgeo.cards import classification_card
from vectorgeo.classifiers import CLASSIFIERS, DEFAULT_CLASSIFIER
from vectorgeo.jobs.classify import plan_prediction, run_prediction, train_classifier
from vectorgeo.jobs.classify_maps import finish_prediction


class ClassifyFlow(VectorGeoFlow):
    """Train on labelled cells, score by H3-blocked cross-validation, predict every embedded cell."""

    labels = Parameter("labels", help="Label file (.geojson/.json/.csv): local path or bucket key", required=True)
    class_property = Parameter(
        "class_property", help="GeoJSON property (CSV column; default 'label' there) holding the class", default="class"
    )
    classifier = Parameter("classifier", help=f"One of {', '.join(CLASSIFIERS)}", default=DEFAULT_CLASSIFIER)
    classifier_name = Parameter(
        "classifier_name",
        help="Name of the classifier's files and registry row; empty = {labels}-{classifier}",
        default="",
    )
    model_filename = Parameter(
        "model_filename", help="Embeddings' model under models/", default=constants.MODEL_FILENAME
    )
    h3_resolution = Parameter(
        "h3_resolution", help="Resolution of the embeddings", type=int, default=constants.H3_RESOLUTION
    )
    probability_class = Parameter(
        "probability_class", help="Also write this class's probability as a COG; empty = none", default=""
    )
    pixels_per_edge = Parameter("pixels_per_edge", help="COG pixels along a hexagon's edge", type=float, default=4.0)
    n_workers = Parameter("n_workers", help="Parallel prediction workers, 1..100", type=int, default=2)
    register = Parameter(
        "register",
        help="Record the model and the map in the registry (DATABASE_URL or the embedded PostgreSQL)",
        type=bool,
        default=True,
    )
    seed = Parameter("seed", help="Seed of the folds and the classifier", type=int, default=0)

    def _name(self) -> str:
        """The given name, or the label file's stem (made safe for a key) and the classifier."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(self.labels).stem).strip("._-") or "labels"
        return self.classifier_name or f"{stem}-{self.classifier}"

    @step
    def start(self):
        """Read the labels, cross-validate, fit and save the classifier; split the prediction work."""
        bucket = self.step_bucket("start")
        with user_errors():
            self.sidecar = train_classifier(
                bucket, model_filename=self.model_filename, h3_resolution=self.h3_resolution, labels=self.labels,
                class_property=self.class_property, classifier=self.classifier, name=self._name(), seed=self.seed,
            )  # fmt: skip
            self.workers = plan_prediction(
                bucket, model_filename=self.model_filename, h3_resolution=self.h3_resolution, n_workers=self.n_workers
            )
        self.version = self.sidecar["version"]
        self.n_parts = sum(len(w) for w in self.workers)
        self.next(self.predict, foreach="workers")

    @retry(times=2)
    @resources(cpu=2, memory=8000)
    @step
    def predict(self):
        """Predict this worker's parts (skipping finished ones)."""
        with user_errors():
            self.result = run_prediction(
                self.step_bucket("predict"), self.input, name=self._name(), version=self.version,
                h3_resolution=self.h3_resolution,
            )  # fmt: skip
        self.next(self.join)

    @card(type="blank")
    @step
    def join(self, inputs):
        """Check every part; write the GeoParquet, the COGs and the summary; record them in the registry."""
        self.merge_artifacts(inputs, include=["n_parts", "sidecar", "version"])
        bucket = self.step_bucket("join")
        with user_errors():
            self.summary = finish_prediction(
                bucket, [i.result for i in inputs], name=self._name(), version=self.version,
                h3_resolution=self.h3_resolution, n_parts=self.n_parts, probability_class=self.probability_class,
                pixels_per_edge=self.pixels_per_edge, open_registry=_open_registry if self.register else None,
            )  # fmt: skip
        current.card.extend(
            classification_card(self.sidecar, self.summary, bucket.read_bytes(self.summary["keys"]["map"]))
        )
        self.next(self.end)

    @step
    def end(self):
        """Print the cross-validation side by side and where the map is."""
        feats = self.sidecar["cv"]["features"]
        for name, scores in feats.items():
            print(f"{name:>10}: blocked-CV accuracy {scores['accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}")
        keys = self.summary["keys"]
        print(f"classifier: {self.sidecar['artifact_key']} (version {self.version})")
        print(f"map: {self.summary['n_cells']} cells -> {keys['geoparquet']}, {keys['cog']}")
        if "registry" in self.summary:
            print(
                f"registry: ml_models id {self.summary['registry']['model_id']}, "
                f"raster_predictions id {self.summary['registry']['prediction_id']}"
            )


def _open_registry():
    """The registry the deployment names (DATABASE_URL), else the embedded PostgreSQL in VG_DATA_DIR."""
    from vectorgeo.registry import open_registry

    servers = store_servers(["pgvector"])
    return open_registry(servers["database_url"], servers["data_dir"])


if __name__ == "__main__":
    ClassifyFlow()
