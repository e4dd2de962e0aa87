"""Installs seqjax: JAX/Flax sequence mixers and the experiments that compare them."""

import importlib.util
import pathlib
import re

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

_HERE = pathlib.Path(__file__).parent
_VERSION = re.search(
    r'__version__ = "([^"]+)"', (_HERE / "seqjax" / "__init__.py").read_text()
).group(1)


def _provenance():
    """seqjax/train/provenance.py loaded by path: stdlib only, so it runs before seqjax's dependencies exist."""
    spec = importlib.util.spec_from_file_location("_seqjax_provenance", _HERE / "seqjax" / "train" / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithCommit(build_py):
    """build_py that writes seqjax/_build_commit.py (the commit built from) into a built package.

    An installed package has no repository beside it, so results.json's
    git_hash would be null; seqjax.train.results reads this file instead. Not
    written for editable installs (they run from the checkout, where git
    answers) nor outside a git checkout (an sdist).
    """

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        provenance = _provenance()
        text = provenance.build_module_text(_HERE)
        if text is not None:
            (pathlib.Path(self.build_lib) / "seqjax" / provenance.BUILD_MODULE).write_text(text)


setup(
    name="seqjax",
    cmdclass={"build_py": BuildWithCommit},
    version=_VERSION,
    description="Sequence mixers (attention, SSMs, linear RNNs) in JAX/Flax, with "
    "LRA, ICL and ICLL experiments.",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["seqjax", "seqjax.*"]),
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.89",
        "tensorflow-datasets>=4.9.8",
        "array-record>=0.7",
        "grain>=0.2.10",
        "ml-collections>=1.0",
        "jaxtyping>=0.2.36",
        "numpy>=1.26",
        "tqdm>=4.66",
        "statsmodels>=0.14",  # real series for the forecasting task (seqjax.data.forecast; pulls in pandas)
        "tensorboardX>=2.6",  # TensorBoard event files (pure Python + protobuf; no TensorFlow, no torch)
        "absl-py>=2.1",
        "matplotlib>=3.8",  # report plots (seqjax.report, experiments.reproduce)
        "scikit-learn>=1.3",  # ICL tree / boosting baselines (seqjax.tasks.icl_learned_baselines)
    ],
    extras_require={
        # nbclient/ipykernel: the tests execute the notebooks; tensorboard: the
        # tests read the event files that seqjax.train writes without TensorFlow.
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29",
                "tensorboard>=2.16", "h5py>=3.10"],
        # h5py: the CSP-Bench reader (seqjax.data.csp_bench); its tests skip without it.
        "csp": ["h5py>=3.10"],
        # libtpu: the TPU kernels' lowering tests also compile them for a TPU v5e
        # topology without a TPU (tests/kernels/lowering.py); .ci/run's TPU step.
        "tpu-compile": ["jax[tpu]"],
        "notebooks": ["jupyter", "nbconvert", "nbformat", "ipykernel"],
    },
)
