"""MCTS over reasoning steps and MCTS-DPO's step-level preference pairs.

Paper: "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning" (MCTS-DPO), Xie et al.,
arXiv 2405.00451. Checked against the official code (YuxiXie/MCTS-DPO, ``mcts_rl/algorithms/mcts/mcts/mcts.py``,
``trainer.py``, ``mcts_rl/utils.py``); what was found there and kept here:

- a node is one step; its prior is ``p = exp(Σ log p_t / len^1.25)`` (length penalty 1.25) over the step's tokens;
- its value ``v`` comes from the evaluator (here: a ``StepScorer``; the paper mixes self-evaluation and the outcome,
  its demo spec and this code use the verifier only) and its step reward is ``r = v - v_parent`` (``r = v`` at the
  root); a new child starts with ``Q = V_parent + r``, ``N = 0``;
- selection: PUCT ``Q + w_exp · p · sqrt(N_parent) / (1 + N)``, ties to the first child;
- one iteration (``iterate``): the root's ``N`` += 1; descend by PUCT to a leaf (unexpanded, terminal, or at the
  depth limit counted from the current search root); then, until a terminal/depth-limited node: expand it (all
  ``n_actions`` children at once, each valued), back up the path if it is not the root, descend to its PUCT child;
  finally back up the whole path once more;
- backup: the leaf gets ``Q = r + γ·V`` and ``N += 1``; every ancestor, bottom-up, gets
  ``V = Σ_c max(1, N_c)·Q_c / Σ_c max(1, N_c)`` over its children, ``N += 1``, and (if not the root)
  ``Q = r + γ·V``;
- the search runs ``4·n_iters`` iterations from the root and ``n_iters`` from each later node, then moves to the
  child with the most visits (MCTS temperature 0) and repeats until a terminal node;
- pairs (``post_tree_construct``/``tsrl_step``): at every node of the chosen path with two or more children, the
  children sorted by ``(Q, π, r, v, N)`` (π: the move distribution, at temperature 0 one-hot on the most visited)
  give chosen = the last, rejected = the first (``choose_worst``); each child's completion runs on through
  single-child chains; with ``conservative`` the DPO loss is label-smoothed by ``ε = min(1 - c, 0.5)``,
  ``c = 1 / (1 + N_rejected / max(1, N_chosen))`` from the two children's visit counts
  (``calculate_preference_confidence`` in ``mcts_rl/utils.py``; the counts are the ``init_values`` of the pair).

Choices of this code where the official one differs or is silent: the moved-to child is the most visited one, ties
to the higher Q (the official also multiplies visits by a "diversity" factor of the grandchildren's visit spread);
by default (``skip_ties=True``) siblings with equal Q (no preference: the official code still pairs them, ordered
by the tie-breaks above) or identical token ids give no pair; the root's value is 0 (no evaluator call).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from entropo.search.steps import Partial, root as root_partial


def step_prior(logprobs: list[float] | tuple[float, ...], length_penalty: float = 1.25) -> float:
    """``exp(Σ logp / len^length_penalty)``; 1 for an empty step."""
    if not logprobs:
        return 1.0
    return math.exp(sum(logprobs) / len(logprobs) ** length_penalty)


@dataclass(eq=False)
class Node:
    partial: Partial
    parent: Node | None = None
    value: float = 0.0  # the evaluator's v
    prior: float = 1.0  # p
    children: list[Node] | None = None
    N: int = 0
    V: float = 0.0
    Q: float = 0.0
    depth: int = 0

    @property
    def r(self) -> float:
        return self.value if self.parent is None else self.value - self.parent.value

    @property
    def terminal(self) -> bool:
        return self.partial.finished


def puct(node: Node, w_exp: float) -> float:
    return node.Q + w_exp * node.prior * math.sqrt(node.parent.N) / (1 + node.N)


def select_child(node: Node, w_exp: float) -> Node:
    """The child with the highest PUCT score (the first one on ties)."""
    return max(node.children, key=lambda c: puct(c, w_exp))


def backup(path: list[Node], gamma: float = 1.0) -> None:
    """MCTS-DPO's backup along ``path`` (root first): see the module docstring."""
    leaf = path[-1]
    leaf.Q = leaf.r + gamma * leaf.V
    leaf.N += 1
    for node in reversed(path[:-1]):
        weights = [max(1, c.N) for c in node.children]
        node.V = sum(w * c.Q for w, c in zip(weights, node.children)) / sum(weights)
        node.N += 1
        if node.parent is not None:
            node.Q = node.r + gamma * node.V


def make_child(parent: Node, partial: Partial, value: float, length_penalty: float = 1.25) -> Node:
    child = Node(partial, parent, value=float(value), prior=step_prior(partial.steps[-1].logprobs, length_penalty),
                 depth=parent.depth + 1)
    child.Q = parent.V + child.r
    return child


@dataclass
class MCTS:
    """Step-level MCTS (``search(example, prompt_ids)`` → the terminal partial reached, and the tree's root)."""

    sampler: Any  # next_steps(partials, n) -> list[list[Partial]]
    scorer: Any  # score(partials) -> list[float]
    n_iters: int = 4
    n_actions: int = 2
    w_exp: float = 1.0
    gamma: float = 1.0
    depth_limit: int = 8
    length_penalty: float = 1.25
    root_factor: int = 4  # the root gets root_factor · n_iters iterations
    _search_root: Node | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.n_iters < 1 or self.n_actions < 1 or self.depth_limit < 1:
            raise ValueError(f"mcts: n_iters, n_actions and depth_limit must be >= 1 "
                             f"(got {self.n_iters}, {self.n_actions}, {self.depth_limit})")

    def stop(self, node: Node) -> bool:
        return node.terminal or node.depth - self._search_root.depth >= self.depth_limit

    def expand(self, node: Node) -> None:
        partials = self.sampler.next_steps([node.partial], self.n_actions)[0]
        values = self.scorer.score(partials)
        node.children = [make_child(node, p, v, self.length_penalty) for p, v in zip(partials, values)]

    def select(self, node: Node) -> list[Node]:
        path = [node]
        while node.children and not self.stop(node):
            node = select_child(node, self.w_exp)
            path.append(node)
        return path

    def iterate(self, node: Node) -> list[Node]:
        self._search_root = node
        node.N += 1
        path = self.select(node)
        while not self.stop(path[-1]):
            self.expand(path[-1])
            if path[-1].parent is not None:
                backup(path, self.gamma)
            if not path[-1].children:
                break
            path.append(select_child(path[-1], self.w_exp))
        backup(path, self.gamma)
        return path

    def search(self, example: Any, prompt_ids: list[int]) -> tuple[Partial, Node, list[Node]]:
        """Search and move step by step until a terminal node; returns (its partial, the root, the chosen path)."""
        root = Node(root_partial(example, prompt_ids))
        current, chosen = root, [root]
        while not current.terminal:
            iters = self.n_iters * (self.root_factor if current is root else 1)
            for _ in range(iters):
                self.iterate(current)
            if not current.children:
                break
            current = max(current.children, key=lambda c: (c.N, c.Q))
            chosen.append(current)
        return current.partial, root, chosen


# ---- MCTS-DPO pairs -------------------------------------------------------------------------------------------------

def preference_confidence(n_chosen: int, n_rejected: int) -> float:
    """``c = 1 / (1 + N_rejected / max(1, N_chosen))`` (official ``calculate_preference_confidence``)."""
    return 1.0 / (1.0 + n_rejected / max(1, n_chosen))


def label_smoothing(n_chosen: int, n_rejected: int) -> float:
    """Conservative DPO label smoothing ``ε = min(1 - c, 0.5)``: (10, 2) → 0.167, (3, 3) → 0.5, (1, 5) → 0.5."""
    return min(1.0 - preference_confidence(n_chosen, n_rejected), 0.5)


@dataclass
class StepPair:
    """One step-level preference: after ``prompt_ids`` (prompt + chosen path so far), ``chosen_ids`` beat
    ``rejected_ids``. ``weight`` is the confidence c; DPO's label smoothing is ``label_smoothing``."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    q_chosen: float
    q_rejected: float
    n_chosen: int
    n_rejected: int
    weight: float
    label_smoothing: float
    depth: int


def _completion(node: Node) -> list[int]:
    """The node's step ids, continued through single-child chains."""
    ids = list(node.partial.steps[-1].ids)
    while node.children and len(node.children) == 1:
        node = node.children[0]
        ids += list(node.partial.steps[-1].ids)
    return ids


def tree_pairs(chosen_path: list[Node], skip_ties: bool = True) -> list[StepPair]:
    """MCTS-DPO's pairs along the chosen path (root first): at each node with >= 2 children, the child ranked
    highest by ``(Q, π, r, v, N)`` vs the lowest (π = 1 for the most visited child, the first among equals)."""
    pairs = []
    for node in chosen_path:
        kids = node.children or []
        if len(kids) < 2:
            continue
        moved = max(kids, key=lambda c: (c.N, c.Q))  # the child the search moves to: π = 1 at temperature 0
        order = sorted(kids, key=lambda c: (c.Q, c is moved, c.r, c.value, c.N))  # stable on full ties
        worst, best = order[0], order[-1]
        if skip_ties and best.Q == worst.Q:
            continue
        chosen, rejected = _completion(best), _completion(worst)
        if chosen == rejected:
            continue
        pairs.append(StepPair(node.partial.ids, chosen, rejected, best.Q, worst.Q, best.N, worst.N,
                              preference_confidence(best.N, worst.N), label_smoothing(best.N, worst.N), node.depth))
    return pairs


def pair_records(pairs: list[StepPair], tokenizer: Any, example: Any = None) -> list[dict[str, Any]]:
    """JSON-ready records: ``prompt``/``chosen``/``rejected`` texts (``prompt`` is the exact text the model saw:
    the formatted prompt and the steps so far) plus the token ids, Q-values, visit counts, ``weight`` (c) and
    ``label_smoothing`` (ε). Texts skip special tokens (an EOS that ends a completion is only in the ids);
    consumers should prefer the ids (no re-encoding of the prefix)."""
    out = []
    for p in pairs:
        rec = {"prompt": tokenizer.decode(p.prompt_ids, skip_special_tokens=True),
               "chosen": tokenizer.decode(p.chosen_ids, skip_special_tokens=True),
               "rejected": tokenizer.decode(p.rejected_ids, skip_special_tokens=True),
               **asdict(p)}
        if example is not None:
            rec["answer"] = example.answer
        out.append(rec)
    return out


def write_pairs_jsonl(path: str | Path, records: list[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
