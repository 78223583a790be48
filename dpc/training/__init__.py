"""Training pieces: the step (forward + losses), optimiser, schedules, checkpoints,
logging, devices and the named helpers of the loop in :mod:`dpc.train`."""
