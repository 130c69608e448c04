"""Why validation sits below training, in 04's words (`inputs.loss_context`, `words.training_markdown`)."""

from types import SimpleNamespace

import pandas as pd

from tradelib.report import words
from tradelib.report.inputs import loss_context


def test_a_walk_forward_explains_its_gap_with_its_last_folds_yardstick():
    """A walk-forward has no train_facts.json of its own (its folds have theirs): 04 gave 'the training loss is the
    mean over an epoch of improving weights' as the sole cause of a validation loss 3.3x below training, where
    the last fold's yardstick shows its validation period is that much quieter (tests/data/real, folds 3)."""
    epochs = pd.DataFrame({"epoch": [0, 1, 2], "fold": [0, 1, 2], "train_loss": [2.56, 1.95, 2.5907],
                           "val_loss": [0.88, 0.84, 0.7887]})
    inputs = SimpleNamespace(summary={"config": {}}, epochs=epochs, facts=None)
    fold_facts = {"target_scale": 0.0125, "zero_mse": {"train": 2.538, "val": 0.746}}
    ctx = loss_context(inputs, fold_facts, "fold-2")
    assert ctx["reasons"][0].startswith("the validation period of fold-2 is quieter: predicting 0 scores 0.746")
    said = words.training_markdown({"training": {"loss": ctx}})
    assert "s = 0.0125 log return of fold-2 (the last fold" in said and "validation windows of fold-2" in said
    single = loss_context(SimpleNamespace(summary={"config": {}}, epochs=epochs, facts=fold_facts))
    assert single["reasons"][0].startswith("the validation period is quieter") and not single["whose"]
