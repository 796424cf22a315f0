"""``or_scene_graph``: structured extraction of an operating-room scene graph — short scene descriptions to
subject–predicate–object triplets — the evaluation target of "ORacle: Large Vision-Language Models for
Knowledge-Guided Holistic OR Domain Modeling" (Özsoy et al., MICCAI 2024, arXiv 2404.07031).

ORacle itself is a supervised vision-language model that generates OR scene graphs from multi-view images; that model
is out of scope here (no images, no VLM). What this task keeps is its output and its metric: a scene graph as a set
of (subject, predicate, object) triplets over an OR vocabulary (staff roles, patient, instruments, furniture), scored
by triplet F1 against the gold graph, so that RL can train a language model to produce scene graphs.

A scene is 1..``max_triplets`` distinct triplets drawn by a seeded generator from valid combinations (a surgeon
drills / saws / cuts / hammers the patient, staff hold / prepare instruments, touch the patient, stand close to each
other, the patient lies on the table). Its description renders every triplet with one of several sentence templates.
The gold completion (``Example.target``, for the SFT warm-up) is the canonical serialisation
``subject,predicate,object;subject,predicate,object`` in description order. Train and held-out scenes are disjoint
by construction (the held-out split is drawn from its own seed stream and train draws that hit it are redrawn).

Verifier: ``correct`` is an exact graph match (F1 = 1); ``score`` (used by the ``task_score`` reward) and the
``triplet_f1`` reward give the F1. Parsing never raises: pieces separated by ``;`` or newlines, each split on ``,``
into exactly three non-empty fields (lower-cased, inner spaces to ``_``); a piece that does not parse is a false
positive, duplicates are false positives beyond the first copy (multiset matching), so repeating a triplet or
padding the output with junk cannot raise the score.
"""

from __future__ import annotations

import random
from collections import Counter

from entropo.registry import register
from entropo.tasks.base import GeneratedTask, make_prompt, strict_params
from entropo.types import Example

STAFF = ("surgeon", "assistant", "nurse", "anesthetist")
OPERATORS = ("surgeon", "assistant")
INSTRUMENTS = ("drill", "saw", "hammer", "scalpel", "cement")
PREDICATES = ("holding", "preparing", "drilling", "sawing", "cutting", "hammering", "touching", "close_to", "lying_on")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "holding": ("the {s} holds the {o}", "the {s} is holding the {o}"),
    "preparing": ("the {s} prepares the {o}", "the {s} gets the {o} ready"),
    "drilling": ("the {s} drills into the {o}", "the {s} is drilling the {o}"),
    "sawing": ("the {s} saws the {o}", "the {s} is sawing the {o}"),
    "cutting": ("the {s} cuts the {o}", "the {s} makes a cut on the {o}"),
    "hammering": ("the {s} hammers the {o}", "the {s} is hammering the {o}"),
    "touching": ("the {s} touches the {o}", "the {s} has a hand on the {o}"),
    "close_to": ("the {s} stands near the {o}", "the {s} is close to the {o}"),
    "lying_on": ("the {s} lies on the {o}", "the {s} is lying on the {o}"),
}

Triplet = tuple[str, str, str]


def valid_triplets() -> list[Triplet]:
    """Every triplet the generator can produce."""
    out: list[Triplet] = [("patient", "lying_on", "table")]
    for s in STAFF:
        out += [(s, p, o) for p in ("holding", "preparing") for o in INSTRUMENTS]
        out += [(s, "touching", "patient"), (s, "close_to", "patient")]
        out += [(s, "close_to", o) for o in STAFF if o != s]
    out += [(s, p, "patient") for s in OPERATORS for p in ("drilling", "sawing", "cutting", "hammering")]
    return out


def serialize(triplets: list[Triplet]) -> str:
    return ";".join(",".join(t) for t in triplets)


def parse_triplets(text: str | None) -> tuple[list[Triplet], int]:
    """(well-formed triplets in order, number of malformed pieces). Never raises."""
    if not isinstance(text, str):
        return [], 0
    good: list[Triplet] = []
    bad = 0
    for piece in text.replace("\n", ";").split(";"):
        piece = piece.strip()
        if not piece:
            continue
        fields = ["_".join(f.strip().lower().split()) for f in piece.split(",")]
        if len(fields) == 3 and all(fields):
            good.append((fields[0], fields[1], fields[2]))
        else:
            bad += 1
    return good, bad


def triplet_f1(prediction: str | None, gold: str | list[Triplet]) -> float:
    """F1 of the predicted triplets against the gold graph (multiset matching; malformed pieces and duplicates count
    as false positives). 0 when nothing matches, including empty or unparseable output."""
    gold_list = parse_triplets(gold)[0] if isinstance(gold, str) else list(gold)
    pred, bad = parse_triplets(prediction)
    if not gold_list:
        return 1.0 if not pred and not bad else 0.0
    gold_count, pred_count = Counter(gold_list), Counter(pred)
    tp = sum(min(n, gold_count[t]) for t, n in pred_count.items())
    if tp == 0:
        return 0.0
    precision = tp / (len(pred) + bad)
    recall = tp / len(gold_list)
    return 2 * precision * recall / (precision + recall)


class ORSceneGraphTask(GeneratedTask):
    """Scene descriptions → triplets. Build it with the registered factory ``or_scene_graph``."""

    def __init__(self, seed: int, eval_size: int, max_triplets: int, min_triplets: int, template: str, chat: bool,
                 train_size: int):
        self.name = "or_scene_graph"
        self.seed = seed
        self.max_triplets, self.min_triplets = max_triplets, min_triplets
        self.template, self.chat = template, chat
        self._train_size = train_size
        self._pool = valid_triplets()
        self._draw_eval(eval_size)

    def _draw(self, rng: random.Random) -> tuple[tuple[Triplet, ...], tuple[int, ...]]:
        k = rng.randint(self.min_triplets, self.max_triplets)
        chosen: list[Triplet] = []
        while len(chosen) < k:
            t = rng.choice(self._pool)
            if t not in chosen:
                chosen.append(t)
        forms = tuple(rng.randrange(len(TEMPLATES[t[1]])) for t in chosen)
        return tuple(chosen), forms

    @staticmethod
    def _key(problem) -> tuple:
        return tuple(sorted(problem[0]))

    def _example(self, problem, split: str, index: int) -> Example:
        triplets, forms = problem
        sentences = [TEMPLATES[p][f].format(s=s.replace("_", " "), o=o.replace("_", " "))
                     for (s, p, o), f in zip(triplets, forms)]
        description = ". ".join(sentences) + "."
        gold = serialize(list(triplets))
        return Example(prompt=make_prompt(self.template.format(description=description), self.chat),
                       answer=gold, target=gold,
                       meta={"task": self.name, "split": split, "index": index, "difficulty": len(triplets),
                             "description": description})

    def correct(self, completion: str, example: Example) -> bool:
        return triplet_f1(completion, example.answer or "") == 1.0

    def score(self, completion: str, example: Example) -> float:
        return triplet_f1(completion, example.answer or "")


@register("task", "or_scene_graph",
          description="OR scene descriptions -> subject,predicate,object triplets; triplet-F1 score (ORacle's target)")
@strict_params("or_scene_graph")
def or_scene_graph(seed: int, eval_size: int = 64, *, max_triplets: int = 2, min_triplets: int = 1,
                   template: str = "{description}\n", chat: bool = False, train_size: int = 100_000
                   ) -> ORSceneGraphTask:
    """``max_triplets``/``min_triplets``: triplets per scene; ``template`` with ``{description}``; ``chat``: chat
    messages instead of plain text."""
    if not 1 <= min_triplets <= max_triplets <= 6:
        raise ValueError(f"or_scene_graph: need 1 <= min_triplets <= max_triplets <= 6 (got {min_triplets}, "
                         f"{max_triplets})")
    if "{description}" not in template:
        raise ValueError("or_scene_graph: template must contain {description}")
    return ORSceneGraphTask(seed, eval_size, max_triplets, min_triplets, template, chat, train_size)
