"""The CPU backend: NumPy (BLAS GEMMs) running each op's reference kernel."""
import numpy as np

from . import Backend

BACKEND = Backend("numpy", np)
