"""Trial selectors, ``EXPERIMENT:key=value,...``: a trial of an experiment's latest search
named by its params, wherever a command takes a trial (:mod:`samtune.commands.sources`)."""

import time

import pandas as pd
import pytest
import torch
import yaml

from samtune import schema
from samtune.cli import main
from samtune.commands.interpolate import source_label
from samtune.commands.sources import open_weights, parse_selector, run_of
from samtune.config import make_trial_config
from samtune.tracking.store import Tracker
from samtune.tracking.trial_run import TrialRun

EXPERIMENT = "digits"
GSAM_2 = f"{EXPERIMENT}:optimizer=gsam,batch_growth_ratio=2,seed=0"
GSAM_1 = f"{EXPERIMENT}:optimizer=gsam,batch_growth_ratio=1,seed=0"


def trial_config(optimizer: str, ratio: float, seed: int):
    return make_trial_config({"optimizer": optimizer, "batch_growth_ratio": ratio, "seed": seed, "epochs": 2,
                              "batch_stages": 2, "num_threads": 1, "sharpness": []})


def record_search(tracker: Tracker, experiment_id: str, name: str, trials: list[tuple[str, float, int]]):
    """A search's parent run and its trials' child runs, as a search records them: {values: run id}."""
    parent = tracker.start_search_run(experiment_id, run_name=name, spec_yaml=f"name: {name}\n",
                                      search_keys=["optimizer", "batch_growth_ratio", "seed"])
    runs = {}
    for number, values in enumerate(trials):
        run = TrialRun.start(tracker, experiment_id, trial_config(*values), run_name=f"#{number} {values}",
                             trial_id=f"{name}_{number}", parent_run_id=parent)
        run.end(schema.COMPLETED)
        runs[values] = run.run_id
    tracker.end_search_run(parent)
    return parent, runs


def model_weights(config) -> dict:
    """The state dict of ``config``'s model, as its trial starts."""
    from samtune.trial.loop import Trial, open_data

    return Trial(config, open_data(config)).model.state_dict()


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_in):
    """An older search with a trial the latest search also has, and one only it has; the
    latest search: gsam and sam x batch_growth_ratio 1 and 2 x seeds 0 and 1 (logged as
    ``2.0``), the two gsam seed-0 trials with logged models; an experiment without a search."""
    uri = store_in(tmp_path_factory.mktemp("selector"))
    tracker = Tracker(uri)
    experiment_id = tracker.ensure_experiment(EXPERIMENT)
    old_parent, old = record_search(tracker, experiment_id, "old", [("gsam", 2.0, 0), ("gsam", 2.0, 7)])
    time.sleep(0.01)  # the latest search is the one started last (ms)
    grid = [(o, r, s) for o in ("gsam", "sam") for r in (1.0, 2.0) for s in (0, 1)]
    parent, runs = record_search(tracker, experiment_id, "latest", grid)
    weights = model_weights(trial_config("gsam", 2.0, 0))  # the same model for both: moved apart
    for values, shift in ((("gsam", 2.0, 0), 0.0), (("gsam", 1.0, 0), 0.05)):
        config = trial_config(*values)
        moved = {k: v + shift if v.is_floating_point() else v for k, v in weights.items()}
        TrialRun(tracker, runs[values], config).log_model({"config": config.model_dump(mode="json"), "model": moved},
                                                          {"final_test_error": 0.1}, step=2)
    train_only = tracker.ensure_experiment("train_only")
    TrialRun.start(tracker, train_only, trial_config("sam", 1.0, 0), run_name="t", trial_id="t").end(schema.COMPLETED)
    assert tracker.latest_search_run(experiment_id) == parent
    return {"uri": uri, "tracker": tracker, "parent": parent, "runs": runs, "old_parent": old_parent, "old": old}


# -- the grammar ---------------------------------------------------------------------------
def test_a_selector_is_an_experiment_and_key_value_pairs():
    selector = parse_selector(GSAM_2)
    assert selector.experiment == EXPERIMENT and selector.text == GSAM_2
    assert selector.pairs == (("optimizer", "gsam"), ("batch_growth_ratio", "2"), ("seed", "0"))
    # the experiment ends at the first ':' a key and '=' follow; a piece without '=' continues
    # the value before it (tuple params are logged comma-joined); spaces around pieces go
    other = parse_selector("team:digits v2:sharpness=hessian_trace, tml , seed = 1,")
    assert other.experiment == "team:digits v2"
    assert other.pairs == (("sharpness", "hessian_trace,tml"), ("seed", "1"))
    assert parse_selector("e:dataset=file:/data/x").pairs == (("dataset", "file:/data/x"),)
    for not_one in ("0123456789abcdef0123456789abcdef", "models:/m-0123", "models:/digits/@best", "digits:seed",
                    ":seed=0", "runs/model.pt"):
        assert parse_selector(not_one) is None, not_one


# -- resolving -----------------------------------------------------------------------------
def test_the_selector_names_the_one_matching_trial_of_the_latest_search(store):
    tracker, runs = store["tracker"], store["runs"]
    assert tracker.client.get_run(runs[("gsam", 2.0, 0)]).data.params["batch_growth_ratio"] == "2.0"
    assert run_of(GSAM_2, tracker) == runs[("gsam", 2.0, 0)]  # 2 matches 2.0
    assert run_of(GSAM_1, tracker) == runs[("gsam", 1.0, 0)]
    assert run_of("digits:seed=1.0,batch_growth_ratio=2.00,optimizer=sam", tracker) == runs[("sam", 2.0, 1)]
    # the older search's copy of that trial is not the one named, nor a second match
    assert run_of(GSAM_2, tracker) != store["old"][("gsam", 2.0, 0)]


def test_only_the_latest_search_is_searched(store):
    with pytest.raises(FileNotFoundError) as err:
        run_of("digits:seed=7", store["tracker"])  # only the older search has seed 7
    message = str(err.value)
    assert "0 of the 8 trials" in message and store["parent"] in message and store["old_parent"] not in message
    assert "seed in 0, 1" in message


def test_no_match_names_the_selector_the_search_and_the_values_there_are(store):
    with pytest.raises(FileNotFoundError) as err:
        run_of("digits:optimizer=gsam,seed=5", store["tracker"])
    assert str(err.value) == (
        f"trial selector 'digits:optimizer=gsam,seed=5': 0 of the 8 trials of the latest search of experiment "
        f"'digits' (parent run {store['parent']}) match; they logged optimizer in gsam, sam; seed in 0, 1")


def test_several_matches_list_the_params_that_tell_them_apart(store):
    runs = store["runs"]
    with pytest.raises(FileNotFoundError) as err:
        run_of("digits:optimizer=gsam,seed=0", store["tracker"])
    first, *lines = str(err.value).splitlines()
    assert first == ("trial selector 'digits:optimizer=gsam,seed=0': 2 trials of the latest search of experiment "
                     f"'digits' (parent run {store['parent']}) match; add a key that tells them apart "
                     "(batch_growth_ratio):")
    assert sorted(lines) == sorted(f"  {runs[('gsam', r, 0)]} (#{n} {('gsam', r, 0)}): batch_growth_ratio={r}"
                                   for n, r in ((0, 1.0), (2, 2.0)))
    with pytest.raises(FileNotFoundError) as err:
        run_of("digits:epochs=2", store["tracker"])  # all eight: five listed
    first, *lines = str(err.value).splitlines()
    assert first.startswith("trial selector 'digits:epochs=2': 8 trials")
    assert first.endswith("add a key that tells them apart (batch_growth_ratio, optimizer, seed):")
    assert len(lines) == 6 and lines[-1] == "  ... and 3 more"


def test_an_unknown_key_or_experiment_says_what_there_is(store):
    tracker = store["tracker"]
    with pytest.raises(FileNotFoundError) as err:
        run_of("digits:optimizer=gsam,sede=0", tracker)
    message = str(err.value)
    assert message.startswith(f"trial selector 'digits:optimizer=gsam,sede=0': no trial of the latest search of "
                              f"experiment 'digits' (parent run {store['parent']}) logged param 'sede' (8 trials; "
                              f"their params: ")
    logged = message.split("their params: ")[1].rstrip(")").split(", ")
    assert {"optimizer", "seed", "batch_growth_ratio", "rho"} <= set(logged) and "sede" not in logged
    with pytest.raises(FileNotFoundError, match=r"trial selector 'nope:seed=0': no experiment 'nope' in sqlite:.*"
                                                r"\(experiments: .*digits.*train_only\)"):
        run_of("nope:seed=0", tracker)
    with pytest.raises(FileNotFoundError, match="trial selector 'train_only:seed=0': experiment 'train_only' .* "
                                                "holds no search"):
        run_of("train_only:seed=0", tracker)


def test_run_ids_and_files_resolve_as_before(store, tmp_path):
    tracker, run_id = store["tracker"], store["runs"][("sam", 1.0, 1)]
    assert run_of(run_id, tracker) == run_id
    with pytest.raises(FileNotFoundError, match="no MLflow run 'feedbeef'"):
        run_of("feedbeef", tracker)
    # a file that exists is read even when its name reads as a selector
    path = tmp_path / "digits:optimizer=gsam"
    config = trial_config("sam", 1.0, 3)
    torch.save({"config": config.model_dump(mode="json"), "model": {"w": torch.ones(2)}}, path)
    assert parse_selector(str(path)) is not None
    saved = open_weights(str(path), store["uri"])
    assert saved.origin == str(path) and saved.run_id is None and torch.equal(saved.model["w"], torch.ones(2))


def test_weights_open_through_a_selector(store):
    saved = open_weights(GSAM_1, store["uri"])
    assert saved.run_id == store["runs"][("gsam", 1.0, 0)] and saved.origin.startswith("logged model models:/m-")
    assert make_trial_config(saved.config).batch_growth_ratio == 1.0


# -- the commands --------------------------------------------------------------------------
def test_show_prints_the_selected_trial_and_refuses_an_ambiguous_one(store, capsys):
    run_id = store["runs"][("gsam", 2.0, 0)]
    assert main(["show", GSAM_2, "--tracking-uri", store["uri"]]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"# trial run {run_id} (#2 ('gsam', 2.0, 0)) in experiment 'digits'")
    assert make_trial_config(yaml.safe_load(shown)) == trial_config("gsam", 2.0, 0)
    assert main(["show", "digits:optimizer=gsam", "--tracking-uri", store["uri"]]) == 2
    error = capsys.readouterr().err
    assert error.startswith("samtune show: error: trial selector 'digits:optimizer=gsam': 4 trials of the latest "
                            "search of experiment 'digits'")


def test_interpolate_between_two_selected_trials(store, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    runs = store["runs"]
    first, second = runs[("gsam", 2.0, 0)], runs[("gsam", 1.0, 0)]
    assert main(["interpolate", GSAM_2, GSAM_1, "--points", "3", "--examples", "16", "--device", "cpu",
                 "--tracking-uri", store["uri"]]) == 0
    out = tmp_path / "interpolations" / f"{source_label(first)}-{source_label(second)}"  # named by the runs
    frame = pd.read_csv(out / schema.ARTIFACT_INTERPOLATION_CSV)
    assert list(frame.a) == [-1.0, 0.0, 0.5, 1.0, 2.0]
    assert frame.train_loss.iloc[1] != frame.train_loss.iloc[3]  # two different models
    run_id = capsys.readouterr().out.rsplit("MLflow run ", 1)[1].strip()
    tags = store["tracker"].client.get_run(run_id).data.tags
    # the tag names the two runs (a selector's commas would break its "<run>,<run>")
    assert tags[schema.TAG_INTERPOLATED_RUNS] == f"{first},{second}"
