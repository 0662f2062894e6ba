"""Flow 05: evaluate a model's embeddings on held-out ground, against baselines.

Runs after flow 03 (it does not need the stores of flow 04). Reads the
embeddings and the land-cover raster; writes
``reports/{name}/res{R}/evaluation.json`` and ``evaluation.png``.
"""

from metaflow import Parameter, card, current, step

import constants
from flow_support import RasterFlow, user_errors
from vectorgeo.cards import evaluation_card
from vectorgeo.evaluation_report import format_report
from vectorgeo.jobs.evaluation import evaluate_model


class EvaluateFlow(RasterFlow):
    """kNN retrieval (Jensen-Shannon) and linear probes vs random, PCA and histogram baselines."""

    model_filename = Parameter("model_filename", help="Model file name under models/", default=constants.MODEL_FILENAME)
    h3_resolution = Parameter(
        "h3_resolution", help="Resolution of the embeddings", type=int, default=constants.H3_RESOLUTION
    )
    max_cells = Parameter("max_cells", help="Most held-out cells to score", type=int, default=5000)
    k = Parameter("k", help="Neighbours per retrieval query", type=int, default=10)
    seed = Parameter("seed", help="Seed of the baselines and the probe split", type=int, default=0)

    @card(type="blank")
    @step
    def start(self):
        """Score the held-out cells and write the report."""
        bucket = self.step_bucket("start")
        with user_errors():
            self.report = evaluate_model(
                bucket,
                model_filename=self.model_filename,
                h3_resolution=self.h3_resolution,
                max_cells=self.max_cells,
                k=self.k,
                landcover=self.landcover,
                legend=self.legend,
                synthetic_seed=self.synthetic_seed,
                seed=self.seed,
            )
        current.card.extend(evaluation_card(self.report, bucket.read_bytes(self.report["figure"])))
        self.next(self.end)

    @step
    def end(self):
        """Print the side-by-side table and where the report is."""
        print(format_report(self.report))
        print(f"report: {self.report['report']} (+ {self.report['figure']})")


if __name__ == "__main__":
    EvaluateFlow()
