"""dpc: differentiable point clouds for unsupervised learning of shape and pose."""

__version__ = "0.1.0"
