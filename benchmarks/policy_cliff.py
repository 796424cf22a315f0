"""The policy cliff (arXiv 2507.20150) on the tiny demo recipe: flip 10% of one rollout batch's rewards and compare
how far the update moves the policy with and without an entropy regularizer, for 1 and for several updates.

Run: /work/venv/bin/python benchmarks/policy_cliff.py [--updates 1 5] [--entropy-coef 0.01] [--flip 0.1]
"""

from __future__ import annotations

import argparse

from entropo.cli import RECIPES_DIR
from entropo.cliff import bandit_cliff, policy_cliff
from entropo.config import load_recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipe", default=str(RECIPES_DIR / "demo.yaml"))
    ap.add_argument("--updates", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--entropy-coef", type=float, default=0.01)
    ap.add_argument("--flip", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()

    for tau in (0.1, 0.0):
        b = bandit_cliff([1, 1, 0], [1, 1.01, 0], tau)
        print(f"bandit r=[1,1,0] -> [1,1.01,0], tau={tau}: |Δπ|₁ = {b['l1']:.6f} (bound {b['bound']:.3g})")
    recipe = load_recipe(args.recipe, ["logging.progress=false"])
    for updates in args.updates:
        res = policy_cliff(recipe, flip_fraction=args.flip, entropy_coef=args.entropy_coef, updates=updates,
                           seed=args.seed)
        print(f"updates={updates}: KL ratio none/entropy = {res['kl_plain_over_entropy']:.3f}, "
              f"L1 ratio = {res['l1_plain_over_entropy']:.3f}\n")


if __name__ == "__main__":
    main()
