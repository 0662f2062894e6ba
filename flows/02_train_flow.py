"""Flow 02: train the triplet-loss encoder on the training shards.

Reads ``train/{train_set}/`` and writes ``models/{name}.keras``, its JSON
sidecar and a diagnostics figure ``models/{name}.png``.
"""

from metaflow import Parameter, card, current, resources, step

import constants
from flow_support import VectorGeoFlow, user_errors
from vectorgeo.cards import training_card
from vectorgeo.jobs.train import train_model


class TrainFlow(VectorGeoFlow):
    """ResNet-style encoder, semi-hard triplet loss, early stopping on held-out pairs."""

    epochs = Parameter("epochs", help="Most epochs (early stopping may end sooner)", type=int, default=10)
    n_train_files = Parameter("n_train_files", help="Shards to train on; 0 = all", type=int, default=0)
    model_filename = Parameter("model_filename", help="Model file name under models/", default=constants.MODEL_FILENAME)
    embed_dim = Parameter("embed_dim", help="Embedding length", type=int, default=16)
    batch_size = Parameter("batch_size", help="Pairs per batch (the pool of in-batch negatives)", type=int, default=128)
    num_filters = Parameter("num_filters", help="Width of the first convolution", type=int, default=32)
    n_conv_blocks = Parameter("n_conv_blocks", help="Residual blocks, each halving the patch", type=int, default=3)
    use_dem = Parameter(
        "use_dem", help="Add a DEM channel (the shards must carry DEM patches)", type=bool, default=False
    )
    margin = Parameter("margin", help="Triplet margin (squared distance, 0..4)", type=float, default=0.2)
    learning_rate = Parameter("learning_rate", help="Adam learning rate", type=float, default=1e-3)
    patience = Parameter("patience", help="Epochs without held-out improvement before stopping", type=int, default=3)
    train_set = Parameter("train_set", help="Shard set under train/", default=constants.TRAIN_SET)
    seed = Parameter("seed", help="Seed of weights, shuffles and augmentation", type=int, default=0)

    @card(type="blank")
    @resources(cpu=4, memory=16000)
    @step
    def start(self):
        """Train, save the model with its sidecar, draw the diagnostics."""
        bucket = self.step_bucket("start")
        with user_errors():
            self.training = train_model(
                bucket,
                train_set=self.train_set,
                n_train_files=self.n_train_files,
                model_filename=self.model_filename,
                embed_dim=self.embed_dim,
                batch_size=self.batch_size,
                num_filters=self.num_filters,
                n_conv_blocks=self.n_conv_blocks,
                use_dem=self.use_dem,
                epochs=self.epochs,
                margin=self.margin,
                learning_rate=self.learning_rate,
                patience=self.patience,
                seed=self.seed,
            )
        current.card.extend(training_card(self.training, bucket.read_bytes(self.training["figure"])))
        self.next(self.end)

    @step
    def end(self):
        """Say where the model is."""
        t = self.training
        print(f"model: {t['model']} (+ {t['sidecar']}, {t['figure']}); best val loss {t['best_val_loss']}")


if __name__ == "__main__":
    TrainFlow()
