"""mpibench: an MPI-parallel storage benchmark for AI workloads."""

import os

# numpy's OpenBLAS starts a thread per core at import, in every rank: 127 idle threads per
# rank on a 128-core node, spinning for a while at start. mpibench does no linear algebra.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
