"""Flow 02: train the patch encoder on the training shards.

Reads ``train/{train_set}/`` (and ``models/{name}.tuning.json`` with
``--from_tuning``) and writes ``models/{name}.keras``, its JSON sidecar and a
diagnostics figure ``models/{name}.png``.
"""

from metaflow import Parameter, card, current, resources, step

import constants
from flow_support import VectorGeoFlow, user_errors
from vectorgeo.cards import training_card
from vectorgeo.encoder import ENCODER_DEFAULTS
from vectorgeo.jobs.train import train_model
from vectorgeo.training import OBJECTIVES, TrainingParams

_D = TrainingParams()


class TrainFlow(VectorGeoFlow):
    """ResNet-style encoder, contrastive (InfoNCE) or triplet objective, early stopping on validation pairs."""

    objective = Parameter("objective", help=f"Training objective: {' or '.join(OBJECTIVES)}", default=_D.objective)
    epochs = Parameter("epochs", help="Most epochs (early stopping may end sooner)", type=int, default=_D.epochs)
    n_train_files = Parameter("n_train_files", help="Shards to train on; 0 = all", type=int, default=0)
    model_filename = Parameter("model_filename", help="Model file name under models/", default=constants.MODEL_FILENAME)
    embed_dim = Parameter("embed_dim", help="Embedding length", type=int, default=ENCODER_DEFAULTS["embed_dim"])
    batch_size = Parameter("batch_size", help="Pairs per batch (in-batch negatives)", type=int, default=_D.batch_size)
    num_filters = Parameter(
        "num_filters", help="Width of the first convolution", type=int, default=ENCODER_DEFAULTS["num_filters"]
    )
    n_conv_blocks = Parameter(
        "n_conv_blocks",
        help="Residual blocks, each halving the patch",
        type=int,
        default=ENCODER_DEFAULTS["n_conv_blocks"],
    )
    composition_skip = Parameter(
        "composition_skip",
        help="Feed the patch's class fractions to the embedding layer beside the convolution features",
        type=bool,
        default=ENCODER_DEFAULTS["composition_skip"],
    )
    use_dem = Parameter(
        "use_dem", help="Add a DEM channel (the shards must carry DEM patches)", type=bool, default=False
    )
    learning_rate = Parameter("learning_rate", help="Peak AdamW learning rate", type=float, default=_D.learning_rate)
    warmup_epochs = Parameter("warmup_epochs", help="Linear warm-up before cosine decay", type=float, default=1.0)
    temperature = Parameter("temperature", help="InfoNCE temperature", type=float, default=_D.temperature)
    neighbor_weight = Parameter(
        "neighbor_weight",
        help="InfoNCE weight of the spatial-neighbour positive (the rest: a second view of the same patch)",
        type=float,
        default=_D.neighbor_weight,
    )
    composition_weight = Parameter(
        "composition_weight",
        help="Weight of the composition task (a linear head predicts the patch's class fractions; 0 = off)",
        type=float,
        default=_D.composition_weight,
    )
    vicreg_weight = Parameter("vicreg_weight", help="Variance/covariance penalty (0 = off)", type=float, default=0.0)
    margin = Parameter("margin", help="Triplet margin (squared distance, 0..4)", type=float, default=_D.margin)
    patience = Parameter("patience", help="Epochs without validation improvement before stopping", type=int, default=3)
    from_tuning = Parameter(
        "from_tuning",
        help="Take the tuned settings in models/{name}.tuning.json (flow 01b) over the flags above",
        type=bool,
        default=False,
    )
    train_set = Parameter("train_set", help="Shard set under train/", default=constants.TRAIN_SET)
    seed = Parameter("seed", help="Seed of weights, shuffles and augmentation", type=int, default=0)

    def _settings(self, bucket) -> dict:
        encoder = {
            k: getattr(self, k) for k in ("embed_dim", "num_filters", "n_conv_blocks", "use_dem", "composition_skip")
        }
        fields = TrainingParams.__dataclass_fields__
        training = {k: getattr(self, k) for k in fields if hasattr(self, k)}
        tuning = None
        if self.from_tuning:
            from vectorgeo.tuning import read_best

            tuning = read_best(bucket, self.model_filename)
            encoder.update(tuning["encoder"], use_dem=self.use_dem)  # tuning scores patches without a DEM
            training.update(tuning["training"])
            training.update(epochs=self.epochs, seed=self.seed)  # the budget is this run's
        return {"encoder": encoder, "training": TrainingParams.from_dict(training), "tuning": tuning}

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
                **self._settings(bucket),
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
