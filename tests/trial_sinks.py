"""A recording training sink and the resume check several test modules share."""

from __future__ import annotations

import io

import pytest
import torch

from samtune.trial.loop import train


class Recorder:
    """Keeps every epoch's record and checkpoint; stops the trial (as a kill between
    epochs would) after epoch ``stop_after``."""

    def __init__(self, stop_after=None):
        self.records, self.checkpoints, self.final, self.stop_after = [], [], None, stop_after

    def on_epoch(self, record, checkpoint, final):
        self.records.append(record)
        self.checkpoints.append(checkpoint())
        self.final = final
        if self.stop_after and record["epoch"] == self.stop_after:
            raise KeyboardInterrupt


RESUMED_KEYS = ("train_loss", "test_loss", "test_error", "batch_size", "lr", "steps")


def assert_resume_is_exact(config, after: int = 1) -> None:
    """A trial killed after epoch ``after`` and resumed from that checkpoint (through a
    save and load, as a file would) continues with the uninterrupted trial's epochs and
    ends on its weights."""
    full = Recorder()
    train(config, full)
    interrupted = Recorder(stop_after=after)
    with pytest.raises(KeyboardInterrupt):
        train(config, interrupted)
    buffer = io.BytesIO()
    torch.save(interrupted.checkpoints[-1], buffer)
    buffer.seek(0)
    resumed = Recorder()
    train(config, resumed, resume=torch.load(buffer, weights_only=True))
    assert [r["epoch"] for r in resumed.records] == [r["epoch"] for r in full.records[after:]]
    for key in RESUMED_KEYS:
        assert [r[key] for r in resumed.records] == [r[key] for r in full.records[after:]], key
    final_full, final_resumed = full.checkpoints[-1]["model"], resumed.checkpoints[-1]["model"]
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)
