"""TFDS builders register on an explicit ``import seqjax.data.builders``, not on ``import seqjax.data``.

Each check runs in a fresh interpreter, so it does not depend on what other
tests imported first.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILDERS = ["regbench", "lra_listops", "lra_text", "lra_retrieval", "lra_image", "lra_pathfinder"]

_CHECK = """
import sys
{imports}
import tensorflow_datasets as tfds

found = []
for name in {names!r}:
    try:
        tfds.builder_cls(name)
        found.append(name)
    except Exception:  # tfds raises DatasetNotFoundError for an unregistered name
        pass
print(",".join(found))
"""


def _registered(imports: str) -> list[str]:
    code = _CHECK.format(imports=imports, names=BUILDERS)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return [n for n in r.stdout.strip().split(",") if n]


def test_import_seqjax_data_registers_nothing_and_the_explicit_import_registers_all():
    assert _registered("import seqjax.data\nfrom seqjax.data import icl, pipeline") == []
    assert _registered("import seqjax.data.builders") == BUILDERS
