"""``python tests/training/slow_train.py [overrides]``: ``python -m dpc.train`` with a
0.15 s pause in every step, so that process-level tests can signal a run mid-way (a test
aid kept out of the product config)."""

import runpy
import time

import dpc.training.step as step_module

_compute_step = step_module.compute_step


def _slow_compute_step(*args, **kwargs):
    time.sleep(0.15)
    return _compute_step(*args, **kwargs)


step_module.compute_step = _slow_compute_step  # dpc.train imports it from here
runpy.run_module("dpc.train", run_name="__main__", alter_sys=True)
