"""Flow 01b: hyper-parameter search between flows 01 and 02, trials in parallel.

Reads ``train/{train_set}/`` and the land-cover raster; keeps the Optuna study
in ``tuning/{study}/journal.log`` (local bucket) or PostgreSQL (S3 bucket,
``--storage=postgres`` or a URL), the validation patches in
``tuning/{study}/validation.npz``, and writes ``models/{name}.tuning.json``.
Trials train off held-out and validation ground and score on validation
ground only; flow 05's held-out ground is never read. A rerun resumes the
study: only the missing trials run.
"""

from metaflow import Parameter, card, current, resources, retry, step

import constants
from flow_support import RasterFlow, study_servers, user_errors
from vectorgeo.cards import tuning_card
from vectorgeo.jobs.tune import finish_tuning, plan_trials, run_trials


class TuneFlow(RasterFlow):
    """Optuna trials as a foreach: train briefly, score on validation ground, keep the best settings."""

    n_trials = Parameter(
        "n_trials", help="Complete trials the study should have (a rerun adds the missing)", type=int, default=20
    )
    n_jobs = Parameter(
        "n_jobs", help="Parallel workers (foreach width); each runs its trials in turn", type=int, default=2
    )
    epochs = Parameter("epochs", help="Training epochs per trial", type=int, default=3)
    train_set = Parameter("train_set", help="Shard set under train/", default=constants.TRAIN_SET)
    n_train_files = Parameter("n_train_files", help="Shards to train on; 0 = all", type=int, default=0)
    model_filename = Parameter(
        "model_filename",
        help="Model the settings are for (models/{name}.tuning.json)",
        default=constants.MODEL_FILENAME,
    )
    embed_dim = Parameter("embed_dim", help="Embedding length (fixed, not tuned)", type=int, default=16)
    objectives = Parameter("objectives", help="Objectives to try: infonce, or infonce,triplet", default="infonce")
    max_validation_cells = Parameter(
        "max_validation_cells", help="Validation patches scored per trial", type=int, default=2000
    )
    seed = Parameter("seed", help="Seed of the samplers, the patches and training", type=int, default=0)
    storage = Parameter(
        "storage",
        help="Where the study lives: empty = a journal in a local bucket, PostgreSQL for S3; 'journal'; "
        "'postgres' (DATABASE_URL, else the embedded server); or an SQLAlchemy URL",
        default="",
    )
    study_name = Parameter("study_name", help="Optuna study; empty = the model's name", default="")

    def _settings(self) -> dict:
        keys = ("train_set", "n_train_files", "model_filename", "epochs", "embed_dim", "objectives", "seed", "storage")
        keys += ("max_validation_cells", "study_name", "landcover", "legend", "synthetic_seed")
        return {**{k: getattr(self, k) for k in keys}, **study_servers(self.storage)}

    @step
    def start(self):
        """Check the inputs, create or resume the study, sample validation patches, split the trials."""
        with user_errors():
            self.specs = plan_trials(
                self.step_bucket("start"), n_trials=self.n_trials, n_jobs=self.n_jobs, run_id=current.run_id,
                **self._settings(),
            )  # fmt: skip
        self.next(self.trial, foreach="specs")

    @retry(times=1)
    @resources(cpu=4, memory=16000)
    @step
    def trial(self):
        """Run this worker's trials against the shared study."""
        with user_errors():
            self.result = run_trials(self.step_bucket("trial"), self.input, **self._settings())
        self.next(self.join)

    @card(type="blank")
    @step
    def join(self, inputs):
        """Check the study is complete and write the best settings beside the model."""
        with user_errors():
            self.tuning = finish_tuning(
                self.step_bucket("join"), [i.result for i in inputs], n_trials=self.n_trials, **self._settings()
            )
        current.card.extend(tuning_card(self.tuning))
        self.next(self.end)

    @step
    def end(self):
        """Say where the settings are."""
        t = self.tuning
        print(f"tuning: best trial {t['best_trial']} of {t['n_trials']}, score {t['best_score']} -> {t['key']}")


if __name__ == "__main__":
    TuneFlow()
