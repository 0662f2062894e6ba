"""Flow 01: anchor/neighbour training pairs, sampled in parallel.

Reads the land-cover raster and writes ``train/{train_set}/part-{i}.npz``
plus ``train/{train_set}/manifest.json`` to the bucket.
"""

from metaflow import Parameter, card, current, resources, retry, step

import constants
from flow_support import RasterFlow, user_errors
from vectorgeo.artifacts import train_prefix
from vectorgeo.cards import pairs_card
from vectorgeo.jobs.pairs import finish_pair_shards, make_pair_shards, plan_pair_shards


class PreprocessFlow(RasterFlow):
    """Sample patch pairs from the land-cover raster into training shards."""

    n_files = Parameter("n_files", help="Number of shards to write", type=int, default=8)
    n_jobs = Parameter("n_jobs", help="Parallel workers (foreach width)", type=int, default=4)
    samples_per_file = Parameter("samples_per_file", help="Pairs per shard", type=int, default=2000)
    patch_size = Parameter("patch_size", help="Patch side in raster pixels", type=int, default=constants.PATCH_PX)
    pair_distance_meters = Parameter(
        "pair_distance_meters",
        help="Largest anchor-neighbour distance in metres; 0 = two patch widths (follows the pixel size)",
        type=float,
        default=0.0,
    )
    max_uniform_fraction = Parameter(
        "max_uniform_fraction",
        help="Drop patches whose main class covers more than this share",
        type=float,
        default=0.95,
    )
    train_set = Parameter("train_set", help="Name of the shard set under train/", default=constants.TRAIN_SET)
    seed = Parameter("seed", help="Sampling seed (shard i uses [seed, i])", type=int, default=0)
    dem = Parameter(
        "dem",
        help="DEM resampled onto each patch: local path or bucket key; empty = the synthetic DEM with the "
        "synthetic land cover, none otherwise",
        default=constants.DEM,
    )

    def _settings(self) -> dict:
        return {
            "train_set": self.train_set,
            "samples_per_file": self.samples_per_file,
            "seed": self.seed,
            "patch_px": self.patch_size,
            "pair_distance_m": self.pair_distance_meters,
            "max_uniform_fraction": self.max_uniform_fraction,
            "landcover": self.landcover,
            "dem": self.dem,
            "legend": self.legend,
            "synthetic_seed": self.synthetic_seed,
        }

    @step
    def start(self):
        """Check the inputs once, then split the shards over workers."""
        with user_errors():
            self.specs = plan_pair_shards(self.step_bucket("start"), self.n_files, self.n_jobs, **self._settings())
        self.next(self.sample, foreach="specs")

    @retry(times=2)
    @resources(cpu=1, memory=4000)
    @step
    def sample(self):
        """Write this worker's shards."""
        with user_errors():
            self.result = make_pair_shards(self.step_bucket("sample"), self.input, **self._settings())
        self.next(self.join)

    @card(type="blank")
    @step
    def join(self, inputs):
        """Check every shard arrived and write the manifest."""
        with user_errors():
            self.manifest = finish_pair_shards(
                self.step_bucket("join"), [i.result for i in inputs], n_files=self.n_files, **self._settings()
            )
        current.card.extend(pairs_card(self.manifest))
        self.next(self.end)

    @step
    def end(self):
        """Say where the shards are."""
        m = self.manifest
        print(f"training pairs: {m['n_pairs']} in {m['n_files']} shards -> {train_prefix(m['train_set'])}")


if __name__ == "__main__":
    PreprocessFlow()
