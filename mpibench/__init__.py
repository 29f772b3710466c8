"""mpibench: an MPI-parallel storage benchmark for AI workloads."""

__version__ = "0.1.0"
