"""The execution stack: engine, executor, worker, model runner, models.

torch warns once per process ("Failed to initialize NumPy") when numpy is
not installed. actorexec never converts tensors to or from numpy, so in the
numpy-free environment of the demo that warning is noise: it is silenced here,
before anything of ours imports torch (workers import this package first too).
"""

import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
