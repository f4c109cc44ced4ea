"""The default text config: any query log (``query<TAB>ids``) and item catalogue.

    python -m experiments.train --config experiments/configs/text.py --workdir DIR \
        --config.data.train=LOG --config.data.test=LOG --config.data.catalogue=ITEMS

Nothing here is tuned to one data set. What depends on the data is derived from it when the
run starts (``mach_jax.config.resolve``: R = 8, B ~ 8 sqrt(K), the loss from labels per
point, exact or candidate decoding from K), and the number of epochs is chosen on a
validation slice carved from the training log (2%, ``data.validation_fraction``): every
epoch is evaluated on it; after an epoch without a better nDCG@5 the run goes back to the
best epoch's state with a tenth of the learning rate (once), then stops after two epochs
without a better nDCG@5. Then it trains afresh on the whole training log, the slice
included, for the kept model's epochs at its rates (``train.refit``, mach_jax/refit.py),
and reads the test log once, at the end. The featurizer is the field's tf-idf: word
1-2-grams and character 3-5-grams within word boundaries, log(1 + tf), idf fitted on the
training text. The protocol and its figures: docs/text.md.
"""

from mach_jax.config import default_config


def get_config():
  c = default_config()
  c.data.name = "queries"
  c.data.catalogue = ""  # id<TAB>title... per item; K = its lines (or set data.num_labels).
  c.data.validation_fraction = 0.02
  c.data.featurizer.update(num_features=1 << 18, word_ngrams=(1, 2), char_ngrams=(3, 5),
                           weighting="log", idf=True)

  # 0 / -1 / auto: from the data (R = 8, B ~ 8 sqrt(K), input_dim = D / R, loss). The
  # softmax over the bucket histogram for every set led BCE on text WordNet's validation
  # slice for two epochs and lost to it over a whole run (docs/text_ablations.md).
  c.model.update(R=0, B=0, input_dim=-1, hidden=(256,), loss="auto")
  # The step one repetition at a time within a device: the same numbers, one repetition's
  # temporaries live at a time (experiments/bench/NOTES.md: less memory, not slower).
  c.model.sequential_reps = True
  # 3e-3: the best of 1e-3 / 3e-3 / 1e-2 in experiments.tune's validation probes on text
  # WordNet, ranked by P@1 then (docs/text_runs.md); experiments.tune chooses again on the data
  # at hand.
  # One step size for the input table and the rest: a 10x table step won validation probes
  # on a quarter of the Debian set and lost on the whole set (docs/text_ablations.md).
  c.optimizer.update(name="adam", learning_rate=3e-3, row_sparse=True)
  # An epoch without a better validation nDCG@5: back to the best epoch's state at a tenth
  # of the step (once); then two more without one end the run. The cap of 20 epochs only
  # bounds a run that never plateaus: a cap of 10 ended text WordNet and Debian while
  # validation still rose; at 20 they stopped by themselves after 14 and 13 (docs/text_runs.md).
  c.train.update(batch_size=256, num_epochs=20, decay_patience=1, decay_factor=0.1,
                 max_decays=1, early_stopping_patience=2, log_every_steps=200)
  # Epochs judged on nDCG@5, not P@1: on a 2% slice P@1 is the noisiest metric, and on text
  # WordNet its dips decayed the step while P@5, nDCG@5 and R@10 were still rising
  # (docs/text_runs.md).
  c.checkpoint.update(every_steps=2000, best_metric="nDCG@5")
  # Then train afresh on every training point with the schedule the slice chose: the peers
  # train on all of them, and the slice has done its work once the schedule is chosen.
  # Decided before any test figure of it was read; about twice the training time.
  c.train.refit = True

  c.eval.update(every_epochs=1, k=10, estimator="log_mean", estimators=("log_mean", "mean"),
                batch_size=512, decode="auto", subset=0)
  return c
