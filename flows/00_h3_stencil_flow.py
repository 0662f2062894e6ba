"""Flow 00: the H3 stencil, every land cell at one resolution.

Reads the land-cover raster (the synthetic default when none is set) and
writes ``stencil/res{R}.parquet`` to the bucket.
"""

from metaflow import Parameter, card, current, step

import constants
from flow_support import RasterFlow, user_errors
from vectorgeo.cards import stencil_card
from vectorgeo.jobs.stencil import make_stencil
from vectorgeo.stencil import parse_aoi


class H3StencilFlow(RasterFlow):
    """H3 cells whose centres are land, by the global land mask and the raster."""

    h3_resolution = Parameter("h3_resolution", help="H3 resolution, 0..15", type=int, default=constants.H3_RESOLUTION)
    aoi = Parameter(
        "aoi",
        help="Area of interest: 'west,south,east,north' degrees, inline GeoJSON, or a GeoJSON file "
        "(local runs only); empty = the raster's footprint",
        type=str,
        default="",
    )

    @card(type="blank")
    @step
    def start(self):
        """Build the stencil and store it in the bucket."""
        with user_errors():
            self.stencil = make_stencil(
                self.step_bucket("start"),
                h3_resolution=self.h3_resolution,
                landcover=self.landcover,
                legend=self.legend,
                aoi=parse_aoi(self.aoi) if self.aoi else None,
                synthetic_seed=self.synthetic_seed,
            )
        current.card.extend(stencil_card(self.stencil))
        self.next(self.end)

    @step
    def end(self):
        """Say where the stencil is."""
        print(
            f"stencil: {self.stencil['n_cells']} land cells at resolution {self.h3_resolution} -> {self.stencil['key']}"
        )


if __name__ == "__main__":
    H3StencilFlow()
