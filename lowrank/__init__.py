"""lowrank: how low-rank is self-attention, and how well do Linformer projections fit it?"""

from lowrank.errors import LowrankError

__version__ = "0.1.0"
__all__ = ["LowrankError", "__version__"]
