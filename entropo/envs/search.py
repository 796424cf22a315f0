"""``search_corpus``: a search agent over a generated corpus, with ReSeek's JUDGE action (registry kind
``environment``).

Method: "ReSeek: A Self-Correcting Framework for Search Agents with Instructive Rewards" (arXiv 2510.00568). After
each retrieval the agent states whether the retrieved information is useful, ``<judge>Yes</judge>`` or
``<judge>No</judge>``; the verdict stays in the context, and after a No the agent must search again before it may
answer. The reward ``reseek_judge`` (``entropo.rewards.reseek``) scores every (information, verdict) pair.

**The world** (``SearchWorld``, built by ``search_world(...)``, deterministic in its parameters, cached): invented
persons, places and rivers whose names come from a seeded syllable generator (e.g. "Quorvel was born in Dranmoor."),
so no pretrained model can know the answers — it has to search. Facts: every person was born in one place and lives
in another; every place lies on a river. One document per fact (one sentence). Persons and places are split into a
training and a held-out part *by entity*: held-out persons are born in / live in held-out places only, so no
held-out person or place name appears in any training question, answer or demonstration.

Questions (task ``search_qa``, ``entropo.tasks.search_qa``), each with its gold answer and aliases:

=====================================================  ====  =============================================
question                                               hops  searches that answer it
=====================================================  ====  =============================================
``Where was X born?``                                  1     ``X born``
``Where does X live?``                                 1     ``X lives``
``Which river runs through P?``                        1     ``P river``
``Which river runs through X's birthplace?``           2     ``X born`` then ``P river`` (P: X's birthplace)
=====================================================  ====  =============================================

**Retrieval**: a real BM25 index (the ``bm25s`` package, Lucene scoring, English stop words) over the documents;
``<search>query</search>`` returns the ``top_k`` best-scoring documents with a positive score (none:
``No results.``), as ``<information>...</information>`` (one document per line).

**The protocol** (one action per turn; stop strings ``</search>`` and ``</answer>`` end an action):

- ``<search>query</search>`` → ``<information>docs</information>``;
- the next action must *start* with ``<judge>Yes</judge>`` or ``<judge>No</judge>`` (judging the last information),
  optionally followed in the same action by a search or an answer;
- after ``<judge>No</judge>`` the agent must search again before answering (an answer is refused with an
  observation saying so, and the episode goes on);
- ``<answer>text</answer>`` ends the episode; it is correct when its normalized text equals a gold alias
  (SQuAD normalization: lower case, no punctuation or articles, collapsed spaces).

A malformed action (no tag, an empty query, a judge with nothing to judge, a missing judge, a judge that is neither
Yes nor No) gets one clear observation naming the fix and costs a turn; it never ends the run. The turn limit is
``max_turns`` (``rollout.max_turns`` overrides it); an episode that ends without an answer is wrong.

**What the reward reads** (``StepResult.info``, merged into ``EpisodeInfo.info``; every step sends the cumulative
state, so the merged dict is the episode's): ``judge_pairs`` — one dict per judged information, in order, with
``information`` (the retrieved text, without the tags), ``verdict`` (``"Yes"``/``"No"``), ``turn`` (the 0-based turn
of the judging action) and ``search_turn``; ``answer`` — the accepted answer text, or None; ``format_errors`` and
``searches`` (counts). ``reseek_judge`` reads these instead of re-parsing the transcript.

``demonstration(example)`` is a worked episode for the SFT warm-up, played against the real index: with probability
``demo_detour`` (deterministic per question) the first search is the bare entity name, which often retrieves the
wrong fact; each verdict is the regex oracle's (a gold alias is in the information), so demonstrations contain both
Yes and No judgements and the search-again-after-No rule.
"""

from __future__ import annotations

import functools
import random
import re
import string
import threading
from dataclasses import dataclass, field
from typing import Any

from entropo.envs.base import Environment, Message, StepResult
from entropo.registry import register
from entropo.types import Example

# ---------------------------------------------------------------------------------------------------- answer matching

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def qa_normalize(text: str) -> str:
    """SQuAD/Search-R1 answer normalization: lower case, punctuation and articles removed, whitespace collapsed."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str | None, aliases: list[str]) -> bool:
    """The normalized prediction equals a normalized gold alias."""
    if prediction is None:
        return False
    pred = qa_normalize(prediction)
    return any(pred == qa_normalize(a) for a in aliases if a)


def alias_in(information: str, aliases: list[str]) -> bool:
    """ReSeek's regex oracle: some gold alias (lower-cased, stripped) is a substring of the lower-cased information."""
    info = (information or "").lower().strip()
    if not info:
        return False
    return any(a.lower().strip() and a.lower().strip() in info for a in aliases if a)


# ---------------------------------------------------------------------------------------------------- the world

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "qu", "r", "s", "t", "th", "tr", "v",
           "z", "zh"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou"]
_CODAS = ["", "", "l", "n", "r", "s", "th", "v", "x"]
_PLACE_ENDS = ["moor", "dale", "holm", "wick", "ford", "mere", "crest", "gard"]
_RIVER_ENDS = ["en", "ander", "ill", "ova", "ask", "eth"]


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _names(rng: random.Random, count: int, kind: str, taken: set[str]) -> list[str]:
    """``count`` new capitalized names; no name is a substring of another (the regex oracle would confuse them)."""
    out: list[str] = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 200_000:
            raise ValueError(f"search world: could not generate {count} distinct {kind} names")
        if kind == "person":
            name = _syllable(rng) + _syllable(rng)
        elif kind == "place":
            name = _syllable(rng) + rng.choice(_PLACE_ENDS)
        else:
            name = _syllable(rng) + rng.choice(_RIVER_ENDS)
        name = name.capitalize()
        low = name.lower()
        if not 5 <= len(name) <= 10 or any(low in t or t in low for t in taken):
            continue
        taken.add(low)
        out.append(name)
    return out


@dataclass
class Question:
    question: str
    answer: str
    aliases: list[str]
    hops: int
    subject: str  # the entity the question is about (the split is by this entity)
    queries: list[str]  # the searches that answer it, in order
    bridge: str | None = None  # 2-hop: the intermediate entity (the first search's answer)
    kind: str = ""


@dataclass
class SearchWorld:
    """Invented entities, their facts as one-sentence documents, a BM25 index over them and the questions."""

    params: dict[str, Any]
    documents: list[str]
    train_questions: list[Question]
    eval_questions: list[Question]
    entities: dict[str, set[str]]  # "train"/"eval" -> person and place names of that split
    _index: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        import bm25s

        tokens = bm25s.tokenize(self.documents, stopwords="en", show_progress=False)
        self._index = bm25s.BM25()
        self._index.index(tokens, show_progress=False)

    def retrieve(self, query: str, k: int) -> list[str]:
        """The ``k`` best BM25 matches of ``query`` with a positive score (best first; [] when nothing matches)."""
        import bm25s

        k = max(1, min(int(k), len(self.documents)))
        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        if not tokens or not tokens[0]:
            return []
        with self._lock:
            ids, scores = self._index.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [self.documents[int(i)] for i, s in zip(ids[0], scores[0]) if float(s) > 0]


def _aliases(name: str, kind: str) -> list[str]:
    if kind == "place":
        return [name, f"{name} City"]
    if kind == "river":
        return [name, f"{name} River", f"River {name}"]
    return [name]


@functools.lru_cache(maxsize=8)
def _world(corpus_seed: int, persons: int, places: int, rivers: int, eval_frac: float, two_hop: bool) -> SearchWorld:
    if persons < 4 or places < 4 or rivers < 2:
        raise ValueError("search world: need persons >= 4, places >= 4 and rivers >= 2")
    if not 0.0 < eval_frac < 1.0:
        raise ValueError(f"search world: eval_frac must be in (0, 1), got {eval_frac}")
    rng = random.Random(f"search-world/{corpus_seed}")
    taken: set[str] = set()
    person_names = _names(rng, persons, "person", taken)
    place_names = _names(rng, places, "place", taken)
    river_names = _names(rng, rivers, "river", taken)
    n_eval_persons, n_eval_places = max(1, round(persons * eval_frac)), max(2, round(places * eval_frac))
    split_persons = {"eval": person_names[:n_eval_persons], "train": person_names[n_eval_persons:]}
    split_places = {"eval": place_names[:n_eval_places], "train": place_names[n_eval_places:]}
    documents: list[str] = []
    questions: dict[str, list[Question]] = {"train": [], "eval": []}
    river_of: dict[str, str] = {}
    for split in ("train", "eval"):
        for place in split_places[split]:
            river_of[place] = rng.choice(river_names)
            documents.append(f"{place} lies on the river {river_of[place]}.")
            questions[split].append(Question(f"Which river runs through {place}?", river_of[place],
                                             _aliases(river_of[place], "river"), 1, place, [f"{place} river"],
                                             kind="river"))
        for person in split_persons[split]:
            born, lives = rng.sample(split_places[split], 2)
            documents.append(f"{person} was born in {born}.")
            documents.append(f"{person} lives in {lives}.")
            questions[split].append(Question(f"Where was {person} born?", born, _aliases(born, "place"), 1, person,
                                             [f"{person} born"], kind="born"))
            questions[split].append(Question(f"Where does {person} live?", lives, _aliases(lives, "place"), 1,
                                             person, [f"{person} lives"], kind="lives"))
            if two_hop:
                questions[split].append(Question(
                    f"Which river runs through {person}'s birthplace?", river_of[born],
                    _aliases(river_of[born], "river"), 2, person, [f"{person} born", f"{born} river"], bridge=born,
                    kind="born_river"))
    rng.shuffle(documents)  # index order decides BM25 ties (e.g. a bare name): no fact type is always first
    params = dict(corpus_seed=corpus_seed, persons=persons, places=places, rivers=rivers, eval_frac=eval_frac,
                  two_hop=two_hop)
    entities = {s: set(split_persons[s]) | set(split_places[s]) for s in ("train", "eval")}
    return SearchWorld(params, documents, questions["train"], questions["eval"], entities)


def search_world(corpus_seed: int = 0, persons: int = 120, places: int = 40, rivers: int = 16,
                 eval_frac: float = 0.2, two_hop: bool = True) -> SearchWorld:
    """The world for these parameters (built once per process, then cached)."""
    return _world(int(corpus_seed), int(persons), int(places), int(rivers), float(eval_frac), bool(two_hop))


def world_of(example: Example) -> SearchWorld:
    corpus = (example.meta or {}).get("corpus")
    if not isinstance(corpus, dict):
        raise ValueError("search_corpus: example.meta['corpus'] is missing; use the task search_qa (its examples "
                         "carry the parameters of the world they were drawn from)")
    return search_world(**corpus)


# ---------------------------------------------------------------------------------------------------- the environment

JUDGE_RE = re.compile(r"<judge>\s*(yes|no)\s*</judge>", re.IGNORECASE)
SEARCH_RE = re.compile(r"<search>(.*?)</search>", re.DOTALL)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
INFO_RE = re.compile(r"<information>(.*?)</information>", re.DOTALL)

JUDGE_FIRST = "Judge the information first: <judge>Yes</judge> (useful) or <judge>No</judge>, then search or answer."
NOTHING_TO_JUDGE = "Nothing to judge: <judge> comes right after an <information> reply. Search or answer."
BAD_JUDGE = "A judgement is <judge>Yes</judge> or <judge>No</judge>."
SEARCH_AGAIN = "After <judge>No</judge>, search again with <search>query</search> before answering."
EMPTY_QUERY = "Empty query: write <search>words to look up</search>."
NO_ACTION = "Write <search>query</search> or <answer>text</answer>."
AFTER_JUDGE = "Now <search>query</search> or <answer>text</answer>."


@register("environment", "search_corpus",
          paper="ReSeek: self-correcting search agent with a JUDGE action, arXiv 2510.00568")
class SearchCorpus(Environment):
    """BM25 search over the ``search_qa`` world with the judge-then-research rule (see the module docstring).

    Params: ``top_k`` (documents per search; the paper retrieves 3), ``max_turns`` (default 6), ``info_chars`` (the
    longest information text shown), ``require_judge`` (False: judging is optional and never enforced; the
    verdicts given are still recorded), ``demo_detour`` (fraction of demonstrations whose first search is the bare
    entity name)."""

    observation_role = "tool"
    stop = ("</search>", "</answer>")

    def __init__(self, top_k: int = 3, max_turns: int = 6, info_chars: int = 600, require_judge: bool = True,
                 demo_detour: float = 0.5):
        if int(top_k) < 1:
            raise ValueError(f"search_corpus: top_k must be >= 1, got {top_k}")
        if not 0.0 <= float(demo_detour) <= 1.0:
            raise ValueError(f"search_corpus: demo_detour must be in [0, 1], got {demo_detour}")
        self.top_k, self.max_turns, self.info_chars = int(top_k), int(max_turns), int(info_chars)
        self.require_judge, self.demo_detour = bool(require_judge), float(demo_detour)

    # ---- episode ---------------------------------------------------------------------------------------------------
    def reset(self, example: Example, seed: int) -> Any:
        del seed  # the world and the retrieval are deterministic
        self.example = example
        self.world = world_of(example)
        self.aliases = list(example.meta.get("aliases") or [example.answer])
        self.pending: str | None = None  # information not judged yet
        self.pending_turn = -1
        self.must_search = False
        self.pairs: list[dict[str, Any]] = []
        self.answer: str | None = None
        self.format_errors = 0
        self.searches = 0
        self.turn = -1
        return example.prompt

    def information(self, query: str) -> str:
        docs = self.world.retrieve(query, self.top_k)
        text = "\n".join(docs) if docs else "No results."
        return text[: self.info_chars]

    def _result(self, observation: str | None = None, done: bool = False, correct: bool = False,
                error: bool = False, tool_call: bool = False) -> StepResult:
        if error:
            self.format_errors += 1
        info = {"judge_pairs": [dict(p) for p in self.pairs], "answer": self.answer,
                "format_errors": self.format_errors, "searches": self.searches}
        # not done yet: the outcome so far is "no answer" (an episode cut by the turn limit is wrong)
        return StepResult(observation=observation, done=done, correct=correct, tool_call=tool_call, info=info)

    def step(self, action: str) -> StepResult:
        self.turn += 1
        rest = action
        judge = JUDGE_RE.search(action)
        first_tag = min([m.start() for m in (SEARCH_RE.search(action), ANSWER_RE.search(action)) if m] or [len(action)])
        if judge is not None and judge.start() > first_tag:
            judge = None  # a judge after the action's search/answer does not judge the information before it
        if judge is None and "<judge>" in action[:first_tag]:
            return self._result(BAD_JUDGE, error=True)
        if self.pending is not None:
            if judge is None:
                if self.require_judge:
                    return self._result(JUDGE_FIRST, error=True)
                self.pending = None  # judging is optional: the information stays unjudged
            else:
                verdict = judge.group(1).capitalize()
                self.pairs.append({"information": self.pending, "verdict": verdict, "turn": self.turn,
                                   "search_turn": self.pending_turn})
                self.pending = None
                self.must_search = verdict == "No" and self.require_judge
                rest = action[judge.end():]
        elif judge is not None:
            return self._result(NOTHING_TO_JUDGE, error=True)
        search, answer = SEARCH_RE.search(rest), ANSWER_RE.search(rest)
        if search is not None and (answer is None or search.start() < answer.start()):
            query = " ".join(search.group(1).split())
            if not query:
                return self._result(EMPTY_QUERY, error=True)
            self.searches += 1
            self.pending, self.pending_turn, self.must_search = self.information(query), self.turn, False
            return self._result(f"<information>{self.pending}</information>", tool_call=True)
        if answer is not None:
            if self.must_search:
                return self._result(SEARCH_AGAIN, error=True)
            self.answer = answer.group(1).strip()
            return self._result(done=True, correct=exact_match(self.answer, self.aliases))
        if judge is not None:
            return self._result(AFTER_JUDGE)
        return self._result(NO_ACTION, error=True)

    # ---- SFT warm-up -----------------------------------------------------------------------------------------------
    def demonstration(self, example: Example) -> list[Message] | None:
        """A worked episode: searches (a bare-name detour first for a ``demo_detour`` share of questions), each
        information judged by the regex oracle, search again after a No, answer once the answer is retrieved.
        None when the planned searches do not retrieve the answer within the turn limit."""
        world = world_of(example)
        meta = example.meta or {}
        queries = list(meta.get("queries") or [])
        aliases = list(meta.get("aliases") or [example.answer])
        if not queries or example.answer is None:
            return None
        detour_draw = random.Random(f"detour/{example.prompt!r}").random()
        if detour_draw < self.demo_detour and meta.get("subject"):
            queries = [meta["subject"], *queries]
        bridge = meta.get("bridge")
        saved_world, self.world = getattr(self, "world", None), world
        try:
            messages: list[Message] = []
            prefix, i = "", 0
            while i < len(queries):
                query = queries[i]
                info = self.information(query)
                messages.append({"role": "assistant", "content": f"{prefix}<search>{query}</search>"})
                messages.append({"role": self.observation_role, "content": f"<information>{info}</information>"})
                useful = alias_in(info, aliases)
                prefix = f"<judge>{'Yes' if useful else 'No'}</judge>"
                if useful:
                    messages.append({"role": "assistant", "content": f"{prefix}<answer>{example.answer}</answer>"})
                    actions = sum(m["role"] == "assistant" for m in messages)
                    return messages if actions <= self.max_turns else None
                i += 1
                if bridge and query == meta.get("subject") and bridge in info and i < len(queries) - 1:
                    i += 1  # the bare-name detour already retrieved the bridge fact: skip the search for it
            return None
        finally:
            self.world = saved_world
