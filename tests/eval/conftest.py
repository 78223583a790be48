"""Shared setup for the evaluation tests: offline wandb, a known KeOps cache folder."""

import os
import tempfile

# A fixed folder so the one-off KeOps compile (~15 s on CPU) is reused across runs.
os.environ.setdefault("KEOPS_CACHE_FOLDER", os.path.join(tempfile.gettempdir(), "dpc-keops-cache"))
os.environ.setdefault("WANDB_MODE", "disabled")
