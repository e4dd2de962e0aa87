"""Thin experiment entrypoints: flags and configs only; the logic is in seqjax."""
