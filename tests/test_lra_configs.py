"""LRA configs: every task × model × scale builds a valid model config, the
paper settings are the papers' (spot checks), and bad arguments fail in one line."""

import pytest

from seqjax import models
from seqjax.errors import ConfigError
from seqjax.experiment import load_config, prepare

TASKS = ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("model", ["transformer", "s4", "s4d", "s5", "mamba", "gla"])
@pytest.mark.parametrize("scale", ["cpu", "paper"])
def test_every_cell_validates(task, model, scale):
    c = load_config(f"configs/lra/{task}.py", f"model={model},scale={scale}")
    models.validate(c.model)
    prepare(c, num_devices=1)  # every check a run makes before training (trainer, optimiser, task, lengths)
    assert c.task.name == "lra" and c.name == f"lra-{task}-{model}-{scale}"
    assert c.model.head == ("retrieval" if task == "retrieval" else "classification")
    assert c.model.num_classes == (10 if task in ("listops", "image") else 2)
    assert c.model.causal is False and c.model.max_length == c.task.max_length
    if scale == "paper":
        assert c.task.max_length == {"listops": 2048, "text": 4096, "retrieval": 4000, "image": 1024,
                                     "pathfinder": 1024, "pathx": 16384}[task]


def test_paper_settings_spot_checks():
    s4 = load_config("configs/lra/listops.py", "model=s4,scale=paper")
    assert (s4.model.num_layers, s4.model.d_model, s4.optim.learning_rate, s4.optim.ssm_learning_rate) == (
        8, 128, 0.01, 0.001)
    assert s4.train.batch_size == 50 and s4.train.steps == (96_000 // 50) * 40
    s5 = load_config("configs/lra/pathx.py", "model=s5,scale=paper")
    assert s5.model.mixer_kwargs["s5"].to_dict() == {"d_state": 256, "blocks": 16}
    assert s5.task.builder_config == "128_hard"
    tr = load_config("configs/lra/text.py", "model=transformer,scale=paper")
    # The LRA schedule's peak 0.05 / sqrt(8000) (rsqrt decay replaced by cosine).
    assert tr.optim.learning_rate == pytest.approx(0.05 / 8000**0.5)
    assert (tr.model.num_layers, tr.model.d_model, tr.model.pooling) == (4, 256, "cls")
    # Retrieval warms up for 8,000 of 5,000 steps: the same linear ramp, ending at 5/8 of the peak.
    rt = load_config("configs/lra/retrieval.py", "model=transformer,scale=paper")
    assert rt.optim.warmup_steps == rt.train.steps == 5000
    assert rt.optim.learning_rate == pytest.approx(0.05 / 8000**0.5 * 5000 / 8000)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="model='mambo'"):
        load_config("configs/lra/listops.py", "model=mambo")
    with pytest.raises(ConfigError, match="scale"):
        load_config("configs/lra/listops.py", "scale=tpu")
    for bad in ("0", "-3", "5k"):
        with pytest.raises(ConfigError, match=rf"^config argument steps='{bad}' must be an int > 0"):
            load_config("configs/lra/listops.py", f"steps={bad}")


@pytest.mark.parametrize("scale", ["cpu", "paper"])
def test_steps_replaces_the_budget(scale):
    """steps=N: N training steps, warm-up a tenth (at most the scale's), the rest of the config unchanged."""
    full = load_config("configs/lra/pathfinder.py", f"model=s4d,scale={scale}")
    short = load_config("configs/lra/pathfinder.py", f"model=s4d,scale={scale},steps=500")
    prepare(short, num_devices=1)
    assert (short.train.steps, short.optim.warmup_steps) == (500, min(50, full.optim.warmup_steps))
    assert short.train.checkpoint_every <= 500 and short.name == f"lra-pathfinder-s4d-{scale}-500steps"
    assert short.model.to_dict() == full.model.to_dict() and short.task.to_dict() == full.task.to_dict()
    assert short.optim.learning_rate == full.optim.learning_rate
    pre = load_config("configs/lra/pathfinder.py", f"model=s4d,scale={scale},steps=500,stage=pretrain")
    assert pre.train.steps == 250  # self-pretraining splits the given budget in two, as the scale's own


@pytest.mark.parametrize("task", [t for t in TASKS if t != "retrieval"])
@pytest.mark.parametrize("scale", ["cpu", "paper"])
def test_self_pretraining_stages(task, scale):
    """stage=pretrain/finetune: masked denoising then the classifier, each half the scratch steps, one vocabulary."""
    scratch, pre, fine = (load_config(f"configs/lra/{task}.py", f"model=transformer,scale={scale},stage={stage}")
                          for stage in ("scratch", "pretrain", "finetune"))
    for c in (pre, fine):
        prepare(c, num_devices=1)
        assert c.train.steps == scratch.train.steps // 2 and c.train.batch_size == scratch.train.batch_size
    assert (pre.task.objective, pre.model.head, fine.task.objective, fine.model.head) == (
        "masked_lm", "lm", "classify", scratch.model.head)
    assert pre.model.vocab_size == fine.model.vocab_size > pre.task.mask_token_id >= scratch.model.vocab_size - 1
    assert fine.train.init_from_skip == "head" and not scratch.train.init_from_skip
    assert (pre.name, fine.name) == (f"lra-{task}-transformer+pretrain-{scale}", f"lra-{task}-transformer+spt-{scale}")
    # Nothing else of the model differs: the fine-tuned run restores every backbone parameter.
    same = {k: v for k, v in fine.model.to_dict().items() if k != "vocab_size"}
    assert same == {k: v for k, v in scratch.model.to_dict().items() if k != "vocab_size"}


def test_no_self_pretraining_on_document_pairs():
    with pytest.raises(ConfigError, match=r"^config argument stage='pretrain' with retrieval: .*allowed: scratch$"):
        load_config("configs/lra/retrieval.py", "model=s4d,stage=pretrain")
