"""Benchmarks (``python -m benchmarks.<name>``).

Importing the package first sets glibc's malloc as the experiment entrypoints
do (:mod:`seqjax.host_allocator`), so that CPU timings are those of a training
run; ``benchmarks.host_allocator`` measures the difference in child processes.
"""

from seqjax import host_allocator

host_allocator.configure()
