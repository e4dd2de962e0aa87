"""Thin experiment entrypoints: flags and configs only; the logic is in seqjax.

Importing the package first sets glibc's malloc so that XLA:CPU keeps its
per-call scratch memory mapped (:mod:`seqjax.host_allocator`; before JAX starts
its backend, which is why it is here).
"""

from seqjax import host_allocator

host_allocator.configure()
