import gzip
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)

# A small, fast recipe on the tiny model: used by the trainer, resume and end-to-end tests.
TINY_OVERRIDES = [
    "model.name_or_path=tiny",
    "warmup.steps=20",
    "warmup.batch_size=32",
    "task.name=arithmetic",
    "task.params={digits: 1, chat: false, template: '{expr}='}",
    "task.eval_size=8",
    "rollout.prompts_per_step=4",
    "rollout.n=4",
    "rollout.max_new_tokens=4",
    "rollout.temperature=1.0",
    "optimizer.lr=1e-3",
    "train.micro_batch_size=8",
    "logging.progress=false",
    "logging.plots=false",
    "checkpoint.every=1",
    "checkpoint.keep=10",
]


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory):
    """SmolLM2-135M-Instruct's real tokenizer and chat template (shipped in tests/data), for multi-turn id checks."""
    from transformers import AutoTokenizer

    data = Path(__file__).parent / "data" / "smollm2_tokenizer"
    folder = tmp_path_factory.mktemp("smollm2_tok")
    with gzip.open(data / "tokenizer.json.gz", "rb") as src, open(folder / "tokenizer.json", "wb") as dst:
        shutil.copyfileobj(src, dst)
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(data / name, folder / name)
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture
def tiny_recipe_overrides():
    return list(TINY_OVERRIDES)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ENTROPO_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set ENTROPO_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def tiny_step_world(overrides=()):
    """A tiny model, its task, engine, reward runner and the trainer's pre-update scoring pass, plus
    ``context(generator)`` building the StepContext a component sees and ``rollout_context(generator, sample)`` the
    RolloutContext a producer sees — for tests of components that add rows (AEPO, Critique-GRPO) or read the model."""
    from types import SimpleNamespace

    from entropo.components import RolloutContext, StepContext
    from entropo.config import load_recipe
    from entropo.models import tiny
    from entropo.rewards.runner import RewardRunner
    from entropo.rollout import HFEngine
    from entropo.trainer import make_task, score_tokens

    recipe = load_recipe(None, ["model.name_or_path=tiny", "task.params={digits: 1, chat: false, template: '{expr}='}",
                                *overrides])
    model, tokenizer = tiny()
    model.eval()
    task = make_task(recipe.task, 0, 8, "task")
    engine = HFEngine(model, tokenizer)
    rewards = RewardRunner([{"name": "correct"}])

    def score(batch):  # the trainer's pass without a reference model or old_token_fns
        batch.old_logprobs, batch.old_entropy, _ = score_tokens(model, batch, temperature=1.0, micro_batch_size=8,
                                                                chunk_size=64)

    def context(generator):
        return StepContext(model=model, tokenizer=tokenizer, engine=engine, task=task, rewards=rewards, recipe=recipe,
                           step=0, rollout_generator=generator, device=torch.device("cpu"))

    def rollout_context(generator, sample=None):
        return RolloutContext.of(context(generator), sample)

    def trainer_run(producers=()):  # what the trainer's add_produced_rows and score_phase read from a Run
        return SimpleNamespace(recipe=recipe, model=model, old_token_fns={}, ref_model=None, producers=list(producers),
                               device=torch.device("cpu"))

    return SimpleNamespace(recipe=recipe, model=model, tokenizer=tokenizer, task=task, engine=engine, rewards=rewards,
                           score=score, context=context, rollout_context=rollout_context, trainer_run=trainer_run)


def padded_rows():
    """3 rows of token ids with >= 2 columns of left padding and >= 1 of right padding, different lengths:
    ``(input_ids, attention_mask, response_mask)`` for log-prob/gradient equivalence tests."""
    ids = torch.randint(3, 40, (3, 12), generator=torch.Generator().manual_seed(0))
    attention = torch.zeros(3, 12, dtype=torch.long)
    attention[0, 2:11] = 1
    attention[1, 4:9] = 1
    attention[2, 3:7] = 1
    response = torch.zeros(3, 12)
    response[0, 6:11] = 1
    response[1, 6:9] = 1
    response[2, 5:7] = 1
    return ids * attention, attention, response
