"""--multiple-validation-sets and --full-validation (in-process, tiny-2l, written datasets)."""

import numpy as np
import pytest

from megastack.data.indexed_writer import IndexedDatasetWriter
from tests.training import in_process

pytestmark = pytest.mark.usefixtures("one_process")

SEQ = 64  # tiny-2l's --seq-length


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Prefixes of a training set and two validation sets of 70-token documents, named for
    what they stand for."""
    root = tmp_path_factory.mktemp("corpora")
    rng = np.random.default_rng(0)
    prefixes = {}
    for name, docs in (("train", 100), ("web", 20), ("code", 14)):
        prefix = str(root / name)
        with IndexedDatasetWriter(prefix, np.uint16) as writer:
            for _ in range(docs):
                writer.add_document(list(rng.integers(1, 100, 70)), [70])
            writer.finalize()
        prefixes[name] = prefix
    return prefixes


def run(corpora, valid, extra=()):
    return in_process.train(["--model", "tiny-2l", "--tokenizer-type", "NullTokenizer",
                             "--vocab-size", "100", "--train-data-path", corpora["train"],
                             "--valid-data-path", *valid, "--micro-batch-size", "2",
                             "--global-batch-size", "4", "--train-iters", "2",
                             "--eval-interval", "2", "--eval-iters", "2", "--lr", "1e-3",
                             *extra])


def validation_record(trainer):
    records = [m for m in trainer.state.history if "lm loss validation" in m]
    assert len(records) == 1
    return records[0]


def test_each_validation_set_is_evaluated_on_its_own(corpora):
    both = validation_record(run(corpora, [corpora["web"], corpora["code"]],
                                 ["--multiple-validation-sets"]))
    web = validation_record(run(corpora, [corpora["web"]]))["lm loss validation"]
    code = validation_record(run(corpora, [corpora["code"]]))["lm loss validation"]
    # Same weights (same seed and training data): each named set scores as it does alone.
    assert both["lm loss validation web"] == pytest.approx(web, rel=1e-6)
    assert both["lm loss validation code"] == pytest.approx(code, rel=1e-6)
    assert web != pytest.approx(code, rel=1e-6)
    assert both["lm loss validation"] == pytest.approx((web + code) / 2, rel=1e-6)


def test_full_validation_reads_every_whole_batch_of_one_epoch(corpora, monkeypatch):
    from megastack.training.trainer import Trainer

    read = []
    evaluate_dataset = Trainer._evaluate_dataset

    def counting(self, dataset, iterations):
        read.append((len(dataset), iterations))
        return evaluate_dataset(self, dataset, iterations)

    monkeypatch.setattr(Trainer, "_evaluate_dataset", counting)
    run(corpora, [corpora["web"], corpora["code"]], ["--multiple-validation-sets",
                                                       "--full-validation"])
    # One epoch of a dataset is its tokens (less the one label shift) in SEQ-long samples;
    # a global batch is 4 of them.
    epochs = [(20 * 70 - 1) // SEQ, (14 * 70 - 1) // SEQ]
    assert read == [(n, n // 4) for n in epochs]


def test_full_validation_of_a_set_smaller_than_a_batch_is_refused(corpora, tmp_path):
    prefix = str(tmp_path / "tiny")
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_document(list(range(1, 100)), [99])
        writer.finalize()
    with pytest.raises(ValueError, match=r"--full-validation: the validation dataset tiny holds "
                                         r"1 sequences, less than one --global-batch-size \(4\)"):
        run(corpora, [corpora["web"], prefix], ["--multiple-validation-sets",
                                                 "--full-validation"])


def test_full_validation_of_a_weighted_blend_is_refused(corpora):
    # megatron-core asserts on it ("size_is_none => weights_are_none fails").
    with pytest.raises(ValueError, match="--valid-data-path is weighted, but --full-validation "
                                         "read each validation dataset as it is"):
        run(corpora, ["0.5", corpora["web"], "0.5", corpora["code"]], ["--full-validation"])
