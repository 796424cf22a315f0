import os

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
