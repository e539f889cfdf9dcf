"""A recording training sink and the resume check several test modules share."""

from __future__ import annotations

import io

import pytest
import torch

from samtune.train import train


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


def assert_resume_is_exact(config) -> None:
    """A trial killed after its first epoch and resumed from that checkpoint (through a
    save and load, as a file would) ends with the uninterrupted trial's losses and weights."""
    full = Recorder()
    train(config, full)
    interrupted = Recorder(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        train(config, interrupted)
    buffer = io.BytesIO()
    torch.save(interrupted.checkpoints[-1], buffer)
    buffer.seek(0)
    resumed = Recorder()
    train(config, resumed, resume=torch.load(buffer, weights_only=True))
    assert [r["train_loss"] for r in resumed.records] == [r["train_loss"] for r in full.records[1:]]
    final_full, final_resumed = full.checkpoints[-1]["model"], resumed.checkpoints[-1]["model"]
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)
