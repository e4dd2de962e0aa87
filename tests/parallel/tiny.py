"""The tiny ICL experiment that the mesh and multi-process tests train (one config, many layouts)."""

from seqjax.experiment import load_config

STEPS = 4
MIXER_KWARGS = {"mha": {"num_heads": 2}, "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4}}


def tiny_icl(mixer="mha", **mesh):
    """ICL linear regression, d=3, 8 points (length 16), one layer of ``mixer``, width 16.

    Args:
      mixer: the registry name of the one layer.
      **mesh: ``config.mesh`` fields (sizes and ``preset``); a ``sequence`` size
        above 1 also sets ``model.sequence_axis``.

    Returns:
      The full config (4 steps, batch 16, no baselines, no progress bar).
    """
    c = load_config("configs/icl/regression.py", "fc=linear,model=transformer,scale=cpu")
    c.task.dim, c.task.n_points, c.model.input_dim, c.model.max_length = 3, 8, 3, 16
    c.model.num_layers, c.model.d_model = 1, 16
    c.model.mixers = mixer
    c.model.mixer_kwargs = {mixer: MIXER_KWARGS.get(mixer, {})}
    c.task.eval_batch_size, c.task.ilwd_batch_size = 16, 8
    c.task.baselines = ()
    c.train.steps, c.train.batch_size, c.train.log_every, c.train.checkpoint_every = STEPS, 16, 1, STEPS
    c.train.progress = False
    c.optim.warmup_steps = 1
    c.mesh.update({"data": 1, "fsdp": 1, "sequence": 1, "tensor": 1, "preset": "dp", **mesh})
    if c.mesh.sequence > 1:
        c.model.sequence_axis = "sequence"
    return c
