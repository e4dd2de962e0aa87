"""Fixtures of the parallel tests."""

import pytest

from seqjax import train
from tests.parallel.tiny import tiny_icl


@pytest.fixture(scope="session")
def one_device_icl(tmp_path_factory):
    """``(results, workdir)`` of the tiny ICL run on one device, made once per test process.

    The reference curve of the mesh and multi-process tests.
    """
    workdir = tmp_path_factory.mktemp("one-device-icl")
    return train.run(tiny_icl(), workdir), workdir
