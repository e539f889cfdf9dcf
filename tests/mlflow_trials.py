"""A completed trial run recorded straight into MLflow, the way samtune's trainable
tags it, for the report tests that need a store without running Ray."""

import time

from samtune import schema


def log_completed_trial(client, experiment_id, parent, trial_id, params, metrics, schedule=None) -> str:
    """A FINISHED child run of ``parent`` with ``params`` and final ``metrics`` (and, for a
    PBT trial, its ``schedule.csv`` text); returns its run id."""
    from mlflow.entities import Metric, Param

    tags = {"samtune.kind": "trial", "samtune.trial_id": trial_id, "samtune.status": "completed",
            "mlflow.parentRunId": parent}
    run_id = client.create_run(experiment_id, run_name=trial_id, tags=tags).info.run_id
    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()])
    if schedule is not None:
        client.log_text(run_id, schedule, schema.ARTIFACT_SCHEDULE)
    client.set_terminated(run_id, "FINISHED")
    return run_id
