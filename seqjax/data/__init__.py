"""Data: samplers, generators and the grain pipeline (see ``docs/architecture.md``).

Importing this package registers nothing with ``tensorflow_datasets``: the TFDS
builders (``regbench`` and the five ``lra_*``) are registered by an explicit
``import seqjax.data.builders`` (importing any builder module does it too), so
code that only samples ICL prompts never pays for TFDS.
"""
