"""A trial that streams an image folder from disk takes the same steps as one that holds
the folder in memory, and records the streamed set as its MLflow dataset input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from samtune.config import ConfigError, make_trial_config
from samtune.trial.loop import train

TRAIN_PER_CLASS, TEST_PER_CLASS = 23, 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("streamed")
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for label, name in enumerate(("ant", "bee", "cat")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 80, (16, 16, 3), dtype=np.uint8) + np.uint8(80 * label)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def trial_values(folder, **extra):
    return {"dataset": f"imagefolder:{folder}", "model": "small_cnn", "optimizer": "sam", "epochs": 3,
            "batch_size": 8, "batch_growth_ratio": 2.0, "batch_stages": 3, "train_eval_examples": 20,
            "sharpness": ["norm_param_l2"], "device": "cpu", "num_threads": 1} | extra


def test_streamed_and_in_memory_trials_count_the_same_examples(folder):
    kept = {}
    for streaming in (False, True):
        extra = {"streaming": True, "image_size": 16} if streaming else {}
        result = train(make_trial_config(trial_values(folder, **extra)))
        kept[streaming] = [(r["batch_size"], r["steps"], r["samples_seen"]) for r in result.history]
    # 69 training images: 8 batches of 8, then 4 of 16, then 2 of 32
    assert kept[False] == kept[True] == [(8, 8, 64), (16, 12, 128), (32, 14, 192)]


def test_streamed_set_is_recorded_by_its_file_list(folder):
    import json

    from samtune.trial import open_data

    config = make_trial_config(trial_values(folder, streaming=True, image_size=16))
    train_record, test_record = open_data(config).records()
    assert [json.loads(r.profile)["num_rows"] for r in (train_record, test_record)] == [69, 15]
    (folder / "test" / "ant" / "0.png").rename(folder / "test" / "ant" / "renamed.png")
    try:
        moved = open_data(config).records()[1]
    finally:
        (folder / "test" / "ant" / "renamed.png").rename(folder / "test" / "ant" / "0.png")
    assert moved.digest != test_record.digest


def test_streamed_trial_evaluates_every_test_image(folder):
    result = train(make_trial_config(trial_values(folder, streaming=True, image_size=16, epochs=1,
                                                  batch_stages=1)))
    wrong = result.history[-1]["test_error"] * 3 * TEST_PER_CLASS
    assert abs(wrong - round(wrong)) < 1e-9  # a fraction of the 15 test images


@pytest.mark.parametrize(("values", "fragment"), [
    ({"dataset": "digits", "streaming": True}, "dataset = 'digits' is held in memory"),
    ({"dataset": "digits", "image_size": 16}, "image_size = 16 sets the crop of a streamed data set"),
    ({"dataset": "imagenet", "autoaugment": True}, "streaming data set gets ImageNet's transforms"),
])
def test_streaming_keys_are_refused_where_they_do_not_apply(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_trial_config(values)
