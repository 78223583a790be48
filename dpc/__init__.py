"""dpc: differentiable point clouds for unsupervised learning of shape and pose."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: ``import dpc`` stays light (no torch / dpc.eval until dpc.load_run is used)
    if name == "load_run":
        from dpc.eval.loaded_run import load_run

        return load_run
    raise AttributeError(f"module 'dpc' has no attribute {name!r}")
