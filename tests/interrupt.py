"""Kill a defense's run at the end of an epoch (before that epoch's checkpoint), then run it again: the resume."""

import pytest

from clpoison.experiments.runner import run_experiment


def interrupt_and_resume(monkeypatch, defense_cls, cfg, out, epoch: int):
    """Run ``cfg`` into ``out`` with ``defense_cls``'s hooks raising KeyboardInterrupt at the end of 0-based
    ``epoch`` (its checkpoint is not written: the last one is the epoch before), then resume it to the end; returns
    the resumed run's results."""
    hooks = defense_cls.training_hooks

    def interrupting(self):
        h = hooks(self)

        def stop(tr, e):
            if e == epoch:
                raise KeyboardInterrupt

        h.epoch_end.append(stop)
        return h

    monkeypatch.setattr(defense_cls, "training_hooks", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, out)
    assert (out.parent / (out.name + ".partial") / "checkpoint.pt").exists() and not out.exists()
    monkeypatch.setattr(defense_cls, "training_hooks", hooks)
    return run_experiment(cfg, out)
