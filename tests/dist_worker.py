"""A training process for the data-parallel tests (tests/test_distributed.py): launched as
``python -m torch.distributed.run --nproc-per-node N tests/dist_worker.py SPEC.json`` (or run directly for one
process). SPEC: {"overrides": [...], "run_dir": ..., "resume": bool, "stop_after": int | null, "fail_rank": int | null,
"out": path for rank 0's summary + final weights}."""

import json
import os
import sys

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def main() -> None:
    from entropo.config import load_recipe
    from entropo.trainer import train

    spec = json.loads(open(sys.argv[1]).read())
    rank = int(os.environ.get("RANK", "0"))
    if spec.get("fail_rank") == rank:  # this rank raises in its first advantage phase
        import entropo.trainer

        def broken(*_a, **_k):
            raise RuntimeError(f"planted failure on rank {rank}")
        entropo.trainer.advantage_phase = broken
    from entropo.cli import resolve_recipe

    recipe = load_recipe(resolve_recipe(spec["recipe"]) if spec.get("recipe") else None, spec["overrides"])
    summary = train(recipe, run_dir=spec["run_dir"], resume=spec.get("resume", False),
                    stop_after=spec.get("stop_after"))
    if rank == 0 and spec.get("out"):
        torch.save({"summary": json.loads(json.dumps(summary, default=str)), "weights": summary.get("final_model")},
                   spec["out"])


if __name__ == "__main__":
    main()
