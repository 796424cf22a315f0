"""``search_qa``: 1- and 2-hop questions about invented entities, answered by searching their generated corpus with
the ``search_corpus`` environment (ReSeek, arXiv 2510.00568; the world is described in ``entropo.envs.search``).

The split is by entity: held-out questions are about held-out persons and places, which never appear in a training
question, answer or demonstration (the world keeps every fact of a held-out person inside the held-out places).
``eval_size`` held-out questions are drawn once from the held-out pool with the run seed; training example ``i`` is
position ``i`` of a seeded permutation of the training pool.

Each example carries in ``meta``: ``aliases`` (gold answers; the first is ``Example.answer``), ``corpus`` (the world's
parameters, which ``search_corpus`` reads to find the same index), ``hops``, ``subject``, ``queries`` (the searches
that answer it, used by the demonstration), ``bridge`` (2-hop) and ``kind``.

Verifier: the last ``<answer>...</answer>`` of the completion equals a gold alias after SQuAD normalization.
"""

from __future__ import annotations

import random

from entropo.envs.search import exact_match, search_world
from entropo.registry import register
from entropo.tasks.base import extract_answer_tag, make_prompt, stable_seed, strict_params
from entropo.types import Example

INSTRUCTIONS = ("Answer the question by searching. Write <search>query</search> to search; the results come back "
                "as <information>...</information>. Then judge them: <judge>Yes</judge> if they help answer the "
                "question, else <judge>No</judge> (after a No, search again). Give the final answer as "
                "<answer>text</answer>.")


class SearchQATask:
    def __init__(self, seed: int, eval_size: int, corpus: dict, chat: bool, instructions: bool,
                 system_prompt: str | None, hops: list[int]):
        self.name = "search_qa"
        self.seed = seed
        self.corpus = corpus
        self.world = search_world(**corpus)
        self.chat = chat
        self.system_prompt = INSTRUCTIONS if instructions and system_prompt is None else system_prompt
        train = [q for q in self.world.train_questions if q.hops in hops]
        held_out = [q for q in self.world.eval_questions if q.hops in hops]
        if not train or not held_out:
            raise ValueError(f"search_qa: no questions with hops in {hops} (hops is a list of 1 and/or 2)")
        if eval_size > len(held_out):
            raise ValueError(f"search_qa: eval_size={eval_size} but the held-out split has only {len(held_out)} "
                             f"questions; lower eval_size or raise persons/places or eval_frac")
        rng = random.Random(stable_seed(seed, "search_qa", "eval"))
        self._eval = [self._example(q) for q in rng.sample(held_out, eval_size)]
        order = list(range(len(train)))
        random.Random(stable_seed(seed, "search_qa", "train")).shuffle(order)
        self._train = [train[j] for j in order]

    def _example(self, q) -> Example:
        meta = {"aliases": list(q.aliases), "corpus": dict(self.corpus), "hops": q.hops, "subject": q.subject,
                "queries": list(q.queries), "bridge": q.bridge, "kind": q.kind, "task": "search_qa"}
        return Example(prompt=make_prompt(q.question, self.chat, self.system_prompt), answer=q.answer, meta=meta)

    def train_size(self) -> int:
        return len(self._train)

    def train_example(self, i: int) -> Example:
        if not 0 <= i < len(self._train):
            raise IndexError(f"train index {i} out of range [0, {len(self._train)})")
        return self._example(self._train[i])

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def correct(self, completion: str, example: Example) -> bool:
        return exact_match(extract_answer_tag(completion), list(example.meta.get("aliases") or [example.answer]))


@register("task", "search_qa", paper="ReSeek, arXiv 2510.00568 (FictionalHot-style invented entities)")
@strict_params("search_qa")
def search_qa(seed: int, eval_size: int = 64, corpus_seed: int = 0, persons: int = 120, places: int = 40,
              rivers: int = 16, eval_frac: float = 0.2, two_hop: bool = True, hops: list[int] | None = None,
              chat: bool = True, instructions: bool = False, system_prompt: str | None = None) -> SearchQATask:
    """Questions over the generated world (``corpus_seed``, ``persons``, ``places``, ``rivers``, ``eval_frac``,
    ``two_hop`` fix it); ``hops`` keeps only 1- or 2-hop questions (default both); ``instructions`` puts the protocol
    in a system prompt (for real models; the tiny model learns it from the SFT demonstrations)."""
    corpus = dict(corpus_seed=int(corpus_seed), persons=int(persons), places=int(places), rivers=int(rivers),
                  eval_frac=float(eval_frac), two_hop=bool(two_hop))
    return SearchQATask(seed, eval_size, corpus, chat, instructions, system_prompt,
                        [int(h) for h in (hops if hops is not None else [1, 2])])
