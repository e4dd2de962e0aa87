"""LRA throughput: does the data path keep the model fed?

Usage::

    python -m benchmarks.lra            # Path-X pipeline + train steps at LRA lengths
    python -m benchmarks.lra --quick    # small counts and short lengths (a minute)

Two measurements, in one process, written to
``benchmarks/results/<host>-<device>-lra[-quick].json``:

1. **pipeline**: examples/s of the grain loader (shuffled random access into
   the array_record files, padding, batching) over a prepared
   ``lra_pathfinder`` split at Path-X size (128×128 = 16,384 tokens), with
   0 (in-process) and 2 worker processes. The data is generated first into a
   temporary folder (``--pathx_examples`` images; generation time reported).
2. **train step**: tokens/s of the jitted train step (forward, backward, AdamW
   update) of each model at its LRA sequence length, with the CPU-scale width
   (``--width``), on random tokens: what the pipeline has to keep up with.

A pipeline faster than the slowest consumer means data is not the
bottleneck; the printed table puts the two side by side.
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.ops import RESULTS, device_label, machine
from benchmarks._timing import time_fn


def bench_pipeline(size: int, num_examples: int, batch_size: int, batches: int, workers: tuple[int, ...]) -> list:
    """Generates a Pathfinder split and times the grain loader over it."""
    import tensorflow_datasets as tfds

    import seqjax.data  # noqa: F401  (registers the builders)
    from seqjax.data.builders.lra_pathfinder import make_config
    from seqjax.data.pipeline import make_loader

    from absl import flags

    # grain's worker processes read absl flags; a plain script has not parsed any.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = make_config(size, "hard", num_examples=num_examples, seed=0)
        builder = tfds.builder("lra_pathfinder", config=config, data_dir=tmp, file_format="array_record")
        start = time.perf_counter()
        builder.download_and_prepare(file_format="array_record")
        gen_s = time.perf_counter() - start
        source = builder.as_data_source("train")
        rows.append({"what": "pathfinder generation", "size": size, "examples": num_examples,
                     "seconds": gen_s, "examples_per_s": num_examples / gen_s})
        for w in workers:
            loader = make_loader(source, batch_size=batch_size, seed=0, pad_to=size * size, pad_id=0,
                                 features=("inputs",), keep=("label",), worker_count=w, shard=(0, 1))
            next(loader)  # start-up (worker processes) is not throughput
            start = time.perf_counter()
            for _ in range(batches):
                next(loader)
            s = time.perf_counter() - start
            rows.append({"what": "grain loader", "size": size, "length": size * size, "workers": w,
                         "batch_size": batch_size, "batches": batches,
                         "examples_per_s": batches * batch_size / s,
                         "tokens_per_s": batches * batch_size * size * size / s})
    return rows


class _ClassifierLoss:
    """The task side of the trainer's step: cross-entropy of the logits against ``batch["targets"]``."""

    @staticmethod
    def loss(logits, batch):
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean(), {}


def train_step(model_name: str, length: int, width: int, batch: int, mixer_kwargs: dict | None = None):
    """The trainer's jitted train step (forward, backward, AdamW) of a 2-layer ``model_name`` classifier.

    It is :func:`seqjax.train.step.make_train_step`, what ``seqjax.train``
    runs (so a mixer with model state, ``routing``'s centroids, or with
    auxiliary losses is measured as it trains), with a constant AdamW.

    Args:
      model_name: a model preset (``"s4d"``, ``"mamba"``, ...).
      length: tokens per example.
      width: ``d_model``.
      batch: examples per step.
      mixer_kwargs: fields set on the ``model_name`` mixer (``{"impl": "chunked"}``).

    Returns:
      ``(step, args)``; ``step(*args)`` returns the next train state and the step's metrics.
    """
    from configs.common import apply_model_preset, base_config
    from seqjax import models
    from seqjax.train.state import create_train_state, split_variables
    from seqjax.train.step import make_train_step

    config = base_config()
    m = config.model
    m.num_layers, m.d_model, m.causal, m.input, m.vocab_size = 2, width, False, "tokens", 256
    m.head, m.num_classes, m.pooling, m.max_length = "classification", 2, "mean", length
    apply_model_preset(config, model_name, num_heads=4)
    if mixer_kwargs:
        m.mixer_kwargs[model_name] = {**m.mixer_kwargs.get(model_name, {}), **mixer_kwargs}
    model = models.build(m)
    tokens = jax.random.randint(jax.random.key(0), (batch, length), 1, 256)
    labels = jax.random.randint(jax.random.key(1), (batch,), 0, 2)
    params, model_state = split_variables(model.init(jax.random.key(2), tokens[:1]))
    lr = 1e-3
    tx = optax.adamw(lr)
    state = create_train_state(params, tx, model_state)
    step = jax.jit(make_train_step(model, _ClassifierLoss(), tx, lambda count: lr))
    return step, (state, {"inputs": tokens, "targets": labels}, jax.random.key(3))


def bench_train_step(model_name: str, length: int, width: int, batch: int, repeats: int) -> dict:
    """Tokens/s of one jitted train step of a ``model_name`` classifier at ``length``."""
    try:
        step, args = train_step(model_name, length, width, batch)
        ms = time_fn(step, *args, repeats=repeats)
    except Exception as e:  # noqa: BLE001 - a model that cannot run at this length is a result too
        return {"what": "train step", "model": model_name, "length": length, "error": f"{type(e).__name__}: {e}"[:200]}
    return {"what": "train step", "model": model_name, "length": length, "width": width, "batch": batch,
            "median_ms": ms, "tokens_per_s": batch * length / (ms / 1e3), "examples_per_s": batch / (ms / 1e3)}


def main(argv=None) -> int:
    """Runs both measurements; prints a table and writes the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", default="transformer,s4d,s5,mamba,lstm")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--pathx_examples", type=int, default=None, help="images generated for the pipeline test")
    p.add_argument("--size", type=int, default=None, help="Pathfinder size for the pipeline (default 128 = Path-X)")
    p.add_argument("--lengths", default=None, help="train-step lengths, comma-separated (default 1024,4096,16384)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    quick = args.quick
    size = args.size or (32 if quick else 128)
    n = args.pathx_examples or (200 if quick else 2000)
    info = machine()
    rows = bench_pipeline(size, n, batch_size=16, batches=5 if quick else 30, workers=(0, 2))
    lengths = [int(v) for v in args.lengths.split(",")] if args.lengths else ([1024] if quick else [1024, 4096, 16384])
    for length in lengths:
        for model in args.models.split(","):
            batch = max(1, (8 if quick else 16) * 1024 // length)
            rows.append(bench_train_step(model, length, args.width, batch, repeats=2 if quick else 3))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lines = ["| what | detail | examples/s | tokens/s |", "| --- | --- | ---: | ---: |"]
    for r in rows:
        detail = ", ".join(f"{k}={r[k]}" for k in ("model", "size", "length", "workers", "batch") if k in r)
        ex = "" if "examples_per_s" not in r else f"{r['examples_per_s']:.1f}"
        tok = "" if "tokens_per_s" not in r else f"{r['tokens_per_s']:.3g}"
        lines.append(f"| {r['what']} | {detail}{' ' + r['error'] if 'error' in r else ''} | {ex} | {tok} |")
    print("\n".join(lines))
    kind = device_label(info)
    out = pathlib.Path(args.out) if args.out else RESULTS / f"{info['host']}-{kind}-lra{'-quick' if quick else ''}.json"
    out.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
