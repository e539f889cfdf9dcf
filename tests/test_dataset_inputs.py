"""Each trial run records its data set as MLflow dataset inputs (name, source,
content digest; context ``training`` for the train split, ``evaluation`` for the
test split).  The digest rule (samtune.data.records.tensor_digest): sha256 over the
split's normalized images as C-contiguous float32 bytes, then its labels as int64
bytes, first 16 hex digits.  The tests recompute it from scikit-learn's digits
with numpy, without samtune's loader."""

import hashlib
import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from samtune import tracking
from samtune.data import records
from samtune.data.records import DatasetRecord, dataset_source, tensor_digest
from samtune.data.trial_data import InMemoryData
from samtune.tracking.store import dataset_input


def digits_digests() -> dict[str, str]:
    """The digits split, normalization and digest, recomputed independently."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = bunch.data / 16.0
    train, test, train_y, test_y = train_test_split(pixels, bunch.target, test_size=1000, random_state=0,
                                                    stratify=bunch.target)
    mean, std = np.float32(train.mean()), np.float32(train.std())

    def digest(x, y):
        images = (x.astype(np.float32) - mean) / std  # float32 arithmetic, as the loader's tensors
        data = np.ascontiguousarray(images, dtype=np.float32).tobytes() + y.astype(np.int64).tobytes()
        return hashlib.sha256(data).hexdigest()[:16]

    return {"training": digest(train, train_y), "evaluation": digest(test, test_y)}


def test_cli_train_run_records_digits_as_its_dataset(tmp_path, monkeypatch, mlflow_uri):
    from samtune.cli import main

    monkeypatch.chdir(tmp_path)
    uri = mlflow_uri
    assert main(["train", "--tracking-uri", uri, "--set", "epochs=1", "--set", "batch_stages=1",
                 "--set", "num_threads=1", "--set", "sharpness=[norm_param_l2]"]) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("samtune-train")
    (run,) = client.search_runs([experiment.experiment_id])
    inputs = {tag.value: i.dataset for i in run.inputs.dataset_inputs for tag in i.tags
              if tag.key == "mlflow.data.context"}
    assert sorted(inputs) == ["evaluation", "training"]
    expected = digits_digests()
    for context, dataset in inputs.items():
        assert dataset.name == "digits"
        assert dataset.digest == expected[context]
        assert dataset.source_type == "code"
        assert json.loads(dataset.source)["tags"]["loader"] == "sklearn.datasets.load_digits"
    assert json.loads(inputs["training"].profile)["num_rows"] == 797
    assert json.loads(inputs["evaluation"].profile) == {"num_rows": 1000, "num_classes": 10,
                                                        "shape": [1, 8, 8], "dtype": "float32"}


def test_digest_is_read_in_chunks_and_cast(monkeypatch):
    x = torch.randn(37, 3, 4, 4)
    y = torch.randint(0, 5, (37,))
    whole = hashlib.sha256(x.numpy().tobytes() + y.numpy().astype(np.int64).tobytes()).hexdigest()[:16]
    assert tensor_digest(x, y) == whole
    monkeypatch.setattr(records, "_HASH_CHUNK_BYTES", 100)  # a couple of rows per chunk
    assert tensor_digest(x, y) == whole
    assert tensor_digest(x.double(), y.int()) == whole  # hashed as float32 / int64
    assert tensor_digest(x[:, :, :, :2], y) != tensor_digest(x[:, :, :, 2:], y)  # non-contiguous views


def test_sources_name_where_the_set_was_read(tmp_path):
    assert dataset_source("cifar10", tmp_path) == (
        "local", json.dumps({"uri": str((tmp_path / "cifar-10-batches-py").resolve())}))
    assert json.loads(dataset_source("cifar100", tmp_path)[1])["uri"].endswith("cifar-100-python")
    assert json.loads(dataset_source("tiny-imagenet", tmp_path)[1])["uri"].endswith("tiny-imagenet-200")
    folder = tmp_path / "shapes"
    assert dataset_source(f"imagefolder:{folder}") == ("local", json.dumps({"uri": str(folder.resolve())}))
    source_type, source = dataset_source("digits")
    assert source_type == "code" and "sklearn.datasets.load_digits" in source


def test_records_are_computed_once_per_loaded_set(monkeypatch):
    from samtune.data.tensors import load_dataset

    data = InMemoryData(load_dataset("digits"))
    first = data.records()
    monkeypatch.setattr(records, "tensor_digest", lambda x, y: pytest.fail("hashed twice"))
    assert data.records() is first
    assert [r.context for r in first] == ["training", "evaluation"]
    assert {r.context: r.digest for r in first} == digits_digests()
    record = dataset_input(first[0])
    assert (record.dataset.name, record.tags[0].key, record.tags[0].value) == (
        "digits", "mlflow.data.context", "training")


def test_log_dataset_writes_both_inputs_once(tmp_path, mlflow_uri):
    from samtune.data.tensors import load_dataset

    tracker = tracking.Tracker(mlflow_uri)
    experiment_id = tracker.ensure_experiment("datasets")
    run_id = tracker.start_trial_run(experiment_id, params={}, run_name="r", trial_id="t1")
    assert not tracker.has_dataset(run_id)
    data = InMemoryData(load_dataset("digits"))
    tracker.log_datasets(run_id, data.records())
    tracker.log_datasets(run_id, data.records())  # MLflow keeps one input per (name, digest)
    inputs = tracker.client.get_run(run_id).inputs.dataset_inputs
    assert tracker.has_dataset(run_id) and len(inputs) == 2
    assert isinstance(data.records()[0], DatasetRecord)


def test_a_data_set_registered_at_the_same_time_by_another_trial_is_linked(tmp_path, monkeypatch, mlflow_uri):
    """Two trials of one experiment starting together insert the same data set row; the
    store's unique key refuses the later insert (sqlite: IntegrityError), and the run must
    still get its inputs.  The refusal is replayed here for the first call."""
    from mlflow.exceptions import MlflowException

    from samtune.data.tensors import load_dataset

    tracker = tracking.Tracker(mlflow_uri)
    experiment_id = tracker.ensure_experiment("datasets")
    run_id = tracker.start_trial_run(experiment_id, params={}, run_name="r", trial_id="t1")
    real, calls = tracker.client.log_inputs, []

    def refused_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                  "datasets.name, datasets.digest")
        return real(*args, **kwargs)

    monkeypatch.setattr(tracker.client, "log_inputs", refused_once)
    tracker.log_datasets(run_id, InMemoryData(load_dataset("digits")).records())
    assert len(calls) == 2 and len(tracker.client.get_run(run_id).inputs.dataset_inputs) == 2

    def broken(*args, **kwargs):
        raise MlflowException("the store is read-only")

    monkeypatch.setattr(tracker.client, "log_inputs", broken)
    with pytest.raises(MlflowException, match="read-only"):  # other errors are not retried
        tracker.log_datasets(run_id, InMemoryData(load_dataset("digits")).records())


def failing_once_after_first_epoch(marker_dir):
    """samtune's trainable, but each trial raises once right after its epoch-1 report
    (with its checkpoint), so that Ray retries it from that checkpoint."""
    import os
    from unittest import mock

    from samtune.search.trainable import samtune_trial

    def trainable(hparams, context):
        from ray import tune

        report = tune.report
        marker = os.path.join(marker_dir, tune.get_context().get_trial_id())

        def report_then_fail(metrics, checkpoint=None):
            report(metrics, checkpoint=checkpoint)
            if metrics.get("epoch") == 1:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # once per trial
                except FileExistsError:
                    return
                raise RuntimeError("injected fault after epoch 1")

        with mock.patch.object(tune, "report", report_then_fail):
            samtune_trial(hparams, context)

    return trainable


@pytest.mark.slow
def test_search_trial_runs_record_their_dataset(tmp_path, local_ray, mlflow_uri):
    """Through Ray: every trial's new run gets the inputs; a trial retried from its
    checkpoint keeps them (and gets no second copy)."""
    from samtune.search import run_search
    from samtune.spec import parse_search_spec

    uri = mlflow_uri
    markers = tmp_path / "faults"
    markers.mkdir()
    spec = parse_search_spec({
        "name": "datasets-e2e", "samples": 2, "concurrency": 2, "resources": {"cpu": 1}, "seed": 3,
        "trial": {"epochs": 2, "batch_size": 64, "batch_growth_ratio": 1.0, "batch_stages": 1,
                  "train_eval_examples": 256, "sharpness": ["norm_param_l2"]},
        "search": {"rho": {"uniform": [0.02, 0.1]}}, "max_failures": 1})
    assert run_search(spec, tracking_uri=uri, storage=str(tmp_path / "ray"),
                      trainable=failing_once_after_first_epoch(str(markers))) == 0
    assert len(list(markers.iterdir())) == 2  # each trial did fail once and resume
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("datasets-e2e")
    trials = [r for r in client.search_runs([experiment.experiment_id])
              if r.data.tags.get("samtune.kind") == "trial"]
    assert len(trials) == 2
    expected = digits_digests()
    for run in trials:
        assert run.data.tags["samtune.status"] == "completed"
        got = sorted((i.dataset.name, i.tags[0].value, i.dataset.digest) for i in run.inputs.dataset_inputs)
        assert got == [("digits", "evaluation", expected["evaluation"]),
                       ("digits", "training", expected["training"])]
