"""A scripted step sampler, a table scorer and a 2-level tree shared by the search tests (test_search.py,
test_mcts_dpo.py)."""

import math

from entropo.search.steps import Partial, Step


class ScriptedSampler:
    """next_steps from a script: response-ids tuple -> list of (token id, prob, finished) children, one token each."""

    def __init__(self, script):
        self.script, self.tokens, self.calls = script, 0, 0

    def next_steps(self, partials, n):
        out = []
        for p in partials:
            kids = self.script[tuple(p.response_ids)][:n]
            self.calls += 1
            self.tokens += len(kids)
            out.append([Partial(p.example, p.prompt_ids, p.steps + (Step((t,), (math.log(prob),), "stop"),), done)
                        for t, prob, done in kids])
        return out


class TableScorer:
    name = "table"

    def __init__(self, values):
        self.values = values

    def score(self, partials):
        return [self.values[p.response_ids[-1]] for p in partials]


# root -> A (p .6, v .2), B (p .4, v .5); A -> A1 (p .5, v 1, terminal), A2 (p .5, v -1, terminal);
# B -> B1 (p .7, v -1, terminal), B2 (p .3, v -1, terminal). Steps are one token: prior = p exactly.
TREE = {(): [(1, 0.6, False), (2, 0.4, False)], (1,): [(3, 0.5, True), (4, 0.5, True)],
        (2,): [(5, 0.7, True), (6, 0.3, True)]}
VALUES = {1: 0.2, 2: 0.5, 3: 1.0, 4: -1.0, 5: -1.0, 6: -1.0}
