"""PORTAL, reduced (Agents Play Thousands of 3D Video Games, arXiv 2503.13356): a language policy writes a
behaviour tree in a small DSL; a simulator executes it in a grid duel against a scripted opponent; the duel's outcome
is the reward.

The paper's loop is an LLM that writes behaviour trees (rule nodes plus small neural task nodes), refined offline
from game metrics and VLM critique of frames. Reduced here: rule nodes only (four node types: ``seq``, ``sel``,
conditions and actions), a 7x7 two-unit grid duel instead of 3D games, and the LLM's revision loop replaced by RL on
the program text (the duel outcome is the reward of a single-turn completion). The paper publishes no code; the
game, the DSL and its semantics below are ours.

The DSL (whitespace ignored)::

    node   := "seq(" node ("," node)* ")" | "sel(" node ("," node)* ")" | cond | action
    cond   := ["!"] ("near" | "inr" | "low" | "hurt" | "elow" | "pot")
    action := "atk" | "adv" | "flee" | "heal" | "wait"

Semantics of one tick (the unit's decision): a node returns ``FAIL``, ``OK`` or an action. An action node returns its
action. A condition returns ``OK`` when true, else ``FAIL``. ``seq`` evaluates its children in order: a ``FAIL``
child fails the ``seq``, an action child ends it with that action, and when every child is ``OK`` it is ``OK``.
``sel`` evaluates its children in order and returns the first one that is not ``FAIL`` (so a true condition ends a
``sel`` with ``OK``); when every child fails it fails. A root that yields no action plays ``wait``.
Conditions: ``near`` enemy at Manhattan distance <= 1; ``inr`` enemy in attack range (distance <= 2); ``low`` own hp
<= 1; ``hurt`` own hp below max; ``elow`` enemy hp <= 1; ``pot`` a potion left.

The game (both units act simultaneously each tick): 1. movement: ``adv`` steps one cell towards the enemy's position
at the start of the tick (along the axis with the larger gap, x on ties), ``flee`` steps to the in-grid neighbour
farthest from it (first of x+, x-, y+, y- on ties; no step if none is farther); two units ending on one cell both stay
put, and a unit stepping onto the other's final cell stays put. 2. ``atk`` hits at the distance after moving with
probability ``hit_near`` (distance 1), ``hit_far`` (distance 2) or 0 (farther), for 1 damage. 3. ``heal`` spends a
potion (+2 hp, capped at max hp; no effect without a potion). Damage and healing of a tick apply together; a unit at
hp <= 0 is dead. Both dead: draw; one dead: the other wins; after ``max_ticks`` the unit with more hp wins, equal hp
is a draw. Start: the program's unit on column 0, the opponent on the last column, rows drawn from the duel seed; all
chance (hits, the ``random`` opponent) comes from ``random.Random(duel_seed)``.

Sandbox: the program text is parsed by the recursive-descent parser below (never ``eval``'d), with limits on its
length, node count and depth; the interpreter counts nodes visited per tick (``max_visits``). A program that breaks
any of these is a :class:`DSLError`; the reward scores it as a loss for that sample and logs the reason.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from typing import Any

from entropo.registry import register
from entropo.tasks.base import make_prompt, stable_seed
from entropo.types import Example, Sample

log = logging.getLogger("entropo.games.portal")

PAPER = "PORTAL: Agents Play Thousands of 3D Video Games, arXiv 2503.13356"
CONDITIONS = ("near", "inr", "low", "hurt", "elow", "pot")
ACTIONS = ("atk", "adv", "flee", "heal", "wait")
COMPOSITES = ("seq", "sel")
MAX_CHARS = 400
MAX_NODES = 48
MAX_DEPTH = 6
MAX_VISITS = 256

# Scripted opponents: behaviour trees in the same DSL, run by the same interpreter (``random`` acts uniformly).
OPPONENTS: dict[str, str | None] = {
    "rusher": "sel(seq(inr,atk),adv)",
    "brawler": "sel(seq(near,atk),adv)",
    "kiter": "sel(seq(near,flee),seq(inr,atk),adv)",
    "turtle": "sel(seq(low,pot,heal),seq(inr,atk),adv)",
    "random": None,
}

RULES = ("Write a behaviour tree for a unit in a 7x7 grid duel (3 hp, 1 potion each; both units act at once each "
         "tick). Grammar: seq(a,b,...) runs children until one fails or acts; sel(a,b,...) runs children until one "
         "does not fail; conditions near (enemy adjacent), inr (enemy within 2), low (own hp <= 1), hurt (hp below 3), "
         "elow (enemy hp <= 1), pot (potion left), prefix ! negates; actions atk (hit 1 dmg: 90% adjacent, 50% at "
         "distance 2), adv (step towards enemy), flee (step away), heal (+2 hp, uses the potion), wait. Kill the enemy "
         "or have more hp after {ticks} ticks. Opponent: {opponent}. Answer with the tree only.")


class DSLError(ValueError):
    """A malformed or over-limit program (the message says what and where)."""


# ---- parser ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    kind: str  # "seq" | "sel" | "cond" | "act"
    name: str = ""  # condition or action name
    negate: bool = False
    children: tuple[Node, ...] = ()

    def __str__(self) -> str:
        if self.kind in COMPOSITES:
            return f"{self.kind}({','.join(str(c) for c in self.children)})"
        return ("!" if self.negate else "") + self.name


_TOKEN = re.compile(r"\s*(?:([a-z]+)|([(),!]))")


def _tokenize(text: str) -> list[tuple[str, int]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise DSLError(f"unexpected character {text[pos]!r} at position {pos}")
        tokens.append((m.group(1) or m.group(2), m.start(1) if m.group(1) else m.start(2)))
        pos = m.end()
    return tokens


def parse(text: str, max_chars: int = MAX_CHARS, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Node:
    """Parse a program into a tree; :class:`DSLError` names the first problem (unknown word, bad nesting, limits)."""
    if not isinstance(text, str):
        raise DSLError(f"program must be text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise DSLError(f"program has {len(text)} characters (limit {max_chars})")
    tokens = _tokenize(text)
    if not tokens:
        raise DSLError("empty program")
    count = [0]
    i = 0

    def node(depth: int) -> Node:
        nonlocal i
        if depth > max_depth:
            raise DSLError(f"tree deeper than {max_depth}")
        count[0] += 1
        if count[0] > max_nodes:
            raise DSLError(f"more than {max_nodes} nodes")
        if i >= len(tokens):
            raise DSLError("program ends where a node was expected")
        tok, pos = tokens[i]
        negate = False
        if tok == "!":
            negate, i = True, i + 1
            if i >= len(tokens):
                raise DSLError("'!' at the end of the program")
            tok, pos = tokens[i]
            if tok not in CONDITIONS:
                raise DSLError(f"'!' must precede a condition, got {tok!r} at position {pos}")
        i += 1
        if tok in COMPOSITES:
            if i >= len(tokens) or tokens[i][0] != "(":
                raise DSLError(f"{tok!r} at position {pos} needs '(' and children")
            i += 1
            children = [node(depth + 1)]
            while i < len(tokens) and tokens[i][0] == ",":
                i += 1
                children.append(node(depth + 1))
            if i >= len(tokens) or tokens[i][0] != ")":
                where = f"position {tokens[i][1]}" if i < len(tokens) else "the end"
                raise DSLError(f"{tok!r} at position {pos}: expected ',' or ')' at {where}")
            i += 1
            return Node(tok, children=tuple(children))
        if tok in CONDITIONS:
            return Node("cond", tok, negate)
        if tok in ACTIONS:
            return Node("act", tok)
        raise DSLError(f"unknown word {tok!r} at position {pos} (conditions: {', '.join(CONDITIONS)}; actions: "
                       f"{', '.join(ACTIONS)}; composites: seq, sel)")

    root = node(1)
    if i != len(tokens):
        raise DSLError(f"unexpected {tokens[i][0]!r} at position {tokens[i][1]} after the complete tree")
    return root


# ---- interpreter ----------------------------------------------------------------------------------------------------

@dataclass
class Unit:
    x: int
    y: int
    hp: int = 3
    potions: int = 1


def distance(a: Unit, b: Unit) -> int:
    return abs(a.x - b.x) + abs(a.y - b.y)


def condition(name: str, me: Unit, enemy: Unit, max_hp: int) -> bool:
    d = distance(me, enemy)
    return {"near": d <= 1, "inr": d <= 2, "low": me.hp <= 1, "hurt": me.hp < max_hp, "elow": enemy.hp <= 1,
            "pot": me.potions > 0}[name]


def decide(tree: Node, me: Unit, enemy: Unit, max_hp: int = 3, max_visits: int = MAX_VISITS) -> str:
    """The action the tree picks this tick (``wait`` when it yields none); DSLError past ``max_visits`` nodes."""
    visits = [0]

    def tick(n: Node) -> str:  # "FAIL" | "OK" | an action
        visits[0] += 1
        if visits[0] > max_visits:
            raise DSLError(f"more than {max_visits} nodes visited in one tick")
        if n.kind == "act":
            return n.name
        if n.kind == "cond":
            return "OK" if condition(n.name, me, enemy, max_hp) != n.negate else "FAIL"
        for child in n.children:
            r = tick(child)
            if n.kind == "seq" and r != "OK":
                return r
            if n.kind == "sel" and r != "FAIL":
                return r
        return "OK" if n.kind == "seq" else "FAIL"

    r = tick(tree)
    return r if r in ACTIONS else "wait"


@dataclass
class GameConfig:
    size: int = 7
    max_hp: int = 3
    potions: int = 1
    heal: int = 2
    max_ticks: int = 30
    hit_near: float = 0.9
    hit_far: float = 0.5


@dataclass
class DuelResult:
    outcome: str  # "win" | "draw" | "loss" (for the program's unit, A)
    ticks: int
    hp: tuple[int, int]
    actions: list[tuple[str, str]] = field(default_factory=list)  # (A's action, B's action) per tick
    positions: list[tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=list)  # after each tick


def _step_towards(me: Unit, target: Unit) -> tuple[int, int]:
    dx, dy = target.x - me.x, target.y - me.y
    if dx == 0 and dy == 0:
        return me.x, me.y
    if abs(dx) >= abs(dy):
        return me.x + (1 if dx > 0 else -1), me.y
    return me.x, me.y + (1 if dy > 0 else -1)


def _step_away(me: Unit, target: Unit, size: int) -> tuple[int, int]:
    best, best_d = (me.x, me.y), distance(me, target)
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        x, y = me.x + dx, me.y + dy
        if 0 <= x < size and 0 <= y < size:
            d = abs(x - target.x) + abs(y - target.y)
            if d > best_d:
                best, best_d = (x, y), d
    return best


def duel(program: Node, opponent: Node | None, seed: int, cfg: GameConfig | None = None,
         start: tuple[tuple[int, int], tuple[int, int]] | None = None, record: bool = False) -> DuelResult:
    """Play one duel of ``program`` (unit A) against ``opponent`` (a tree, or None for uniform random actions)."""
    cfg = cfg or GameConfig()
    rng = random.Random(seed)
    if start is None:
        start = ((0, rng.randrange(cfg.size)), (cfg.size - 1, rng.randrange(cfg.size)))
    a = Unit(*start[0], hp=cfg.max_hp, potions=cfg.potions)
    b = Unit(*start[1], hp=cfg.max_hp, potions=cfg.potions)
    res = DuelResult("draw", 0, (a.hp, b.hp))
    for t in range(cfg.max_ticks):
        act_a = decide(program, a, b, cfg.max_hp)
        act_b = decide(opponent, b, a, cfg.max_hp) if opponent is not None else rng.choice(ACTIONS)
        # 1. movement, from the positions at the start of the tick
        targets = []
        for me, other, act in ((a, b, act_a), (b, a, act_b)):
            if act == "adv":
                targets.append(_step_towards(me, other))
            elif act == "flee":
                targets.append(_step_away(me, other, cfg.size))
            else:
                targets.append((me.x, me.y))
        if targets[0] == targets[1]:
            targets = [(a.x, a.y), (b.x, b.y)]
        (a.x, a.y), (b.x, b.y) = targets
        # 2. attacks at the distance after moving; 3. heals; both apply together
        d = distance(a, b)
        p_hit = cfg.hit_near if d <= 1 else cfg.hit_far if d == 2 else 0.0
        dmg_to_b = int(act_a == "atk" and rng.random() < p_hit)
        dmg_to_a = int(act_b == "atk" and rng.random() < p_hit)
        for me, act, dmg in ((a, act_a, dmg_to_a), (b, act_b, dmg_to_b)):
            gain = 0
            if act == "heal" and me.potions > 0:
                me.potions -= 1
                gain = cfg.heal
            me.hp = min(cfg.max_hp, me.hp - dmg + gain)
        if record:
            res.actions.append((act_a, act_b))
            res.positions.append(((a.x, a.y), (b.x, b.y)))
        res.ticks = t + 1
        if a.hp <= 0 or b.hp <= 0:
            break
    res.hp = (a.hp, b.hp)
    if a.hp <= 0 and b.hp <= 0:
        res.outcome = "draw"
    elif b.hp <= 0:
        res.outcome = "win"
    elif a.hp <= 0:
        res.outcome = "loss"
    else:
        res.outcome = "win" if a.hp > b.hp else "loss" if a.hp < b.hp else "draw"
    return res


_OPP_TREES: dict[str, Node | None] = {}


def opponent_tree(name: str) -> Node | None:
    if name not in OPPONENTS:
        raise ValueError(f"unknown opponent {name!r}; choose from {', '.join(OPPONENTS)}")
    if name not in _OPP_TREES:
        text = OPPONENTS[name]
        _OPP_TREES[name] = parse(text) if text is not None else None
    return _OPP_TREES[name]


SCORE = {"win": 1.0, "draw": 0.5, "loss": 0.0}


def evaluate_program(text: str, opponent: str, seeds: list[int], cfg: GameConfig | None = None) -> dict[str, Any]:
    """Parse ``text`` and play it against ``opponent`` once per seed: {valid, error, wins, draws, losses, score}
    (score: mean of win 1 / draw 0.5 / loss 0; an invalid program scores every duel as a loss)."""
    try:
        tree = parse(text)
        outcomes = [duel(tree, opponent_tree(opponent), s, cfg).outcome for s in seeds]
    except DSLError as e:
        return {"valid": False, "error": str(e), "wins": 0, "draws": 0, "losses": len(seeds), "score": 0.0}
    return {"valid": True, "error": "", "wins": outcomes.count("win"), "draws": outcomes.count("draw"),
            "losses": outcomes.count("loss"), "score": sum(SCORE[o] for o in outcomes) / max(1, len(outcomes))}


def random_program(rng: random.Random, depth: int = 0, max_depth: int = 3) -> str:
    """A random valid program (the SFT warm-up's seeded targets): a ``sel`` of 1-3 guarded actions and a default."""
    if depth == 0:
        n = rng.randint(1, 3)
        parts = [random_program(rng, 1, max_depth) for _ in range(n)] + [rng.choice(ACTIONS)]
        return f"sel({','.join(parts)})"
    conds = [("!" if rng.random() < 0.2 else "") + rng.choice(CONDITIONS) for _ in range(rng.randint(1, 2))]
    return f"seq({','.join(conds)},{rng.choice(ACTIONS)})"


# ---- task and reward ------------------------------------------------------------------------------------------------

def extract_program(completion: str) -> str:
    """The program is the completion's first non-empty line (the tiny model writes one line; a chat model may add
    text after it)."""
    for line in completion.strip().splitlines():
        line = line.strip().strip("`").strip()
        if line:
            return line
    return ""


class PortalDuelTask:
    """Prompts naming a scripted opponent; train example ``i`` carries ``duels`` training duel seeds, each eval example
    one held-out duel seed (so eval accuracy is the win rate). Train seeds are even, eval seeds odd: disjoint."""

    def __init__(self, seed: int, eval_size: int, opponents: list[str], duels: int, describe: bool, template: str,
                 train_size: int, chat: bool = False):
        for o in opponents:
            opponent_tree(o)
        if duels < 1:
            raise ValueError(f"portal_duel: duels must be >= 1, got {duels!r}")
        self.name, self.seed, self.opponents, self.duels = "portal_duel", seed, list(opponents), duels
        self.describe, self.template, self._train_size, self.chat = describe, template, train_size, chat
        self._eval = [self._example(self.opponents[j % len(self.opponents)],
                                    [2 * (stable_seed(seed, "portal-eval", j) >> 2) + 1], "eval", j,
                                    random.Random(stable_seed(seed, "portal-eval-target", j)))
                      for j in range(eval_size)]

    def _example(self, opponent: str, seeds: list[int], split: str, index: int, rng: random.Random) -> Example:
        text = RULES.format(ticks=GameConfig().max_ticks, opponent=opponent) if self.describe else \
            self.template.format(opponent=opponent)
        return Example(prompt=make_prompt(text, self.chat), answer=None, target=random_program(rng),
                       meta={"task": self.name, "opponent": opponent, "duel_seeds": seeds, "split": split,
                             "index": index})

    def train_size(self) -> int:
        return self._train_size

    def train_example(self, i: int) -> Example:
        if not 0 <= i < self._train_size:
            raise IndexError(f"train index {i} out of range [0, {self._train_size})")
        rng = random.Random(stable_seed(self.seed, "portal-train", i))
        opponent = rng.choice(self.opponents)
        seeds = [2 * (stable_seed(self.seed, "portal-train", i, k) >> 2) for k in range(self.duels)]
        return self._example(opponent, seeds, "train", i, rng)

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def correct(self, completion: str, example: Example) -> bool:
        """The program wins more than half of the example's duels (eval: wins its one held-out duel)."""
        r = evaluate_program(extract_program(completion), example.meta["opponent"], example.meta["duel_seeds"])
        return r["wins"] * 2 > len(example.meta["duel_seeds"])


@register("task", "portal_duel", description="PORTAL (reduced): write a behaviour tree in a DSL for a grid duel",
          paper=PAPER)
def portal_duel_task(seed: int, eval_size: int = 64, *, opponents: list[str] | None = None, duels: int = 4,
                     describe: bool = False, template: str = "BT vs {opponent}:", train_size: int = 100_000,
                     chat: bool = False, **unknown: Any) -> PortalDuelTask:
    """Task factory. ``opponents`` (default all of rusher, brawler, kiter, turtle, random), ``duels`` training duels
    per prompt, ``describe`` (prompt = the full rules text, for chat models; else ``template`` with ``{opponent}``),
    ``chat`` (the prompt as chat messages)."""
    if unknown:
        raise TypeError(f"task 'portal_duel' got unknown parameter(s) {', '.join(map(repr, unknown))}; allowed "
                        f"parameters are: opponents, duels, describe, template, train_size, chat")
    try:
        template.format(opponent="rusher")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"portal_duel: bad template ({e!r}); its only placeholder is {{opponent}}") from None
    return PortalDuelTask(seed, eval_size, list(opponents or OPPONENTS), int(duels), bool(describe), template,
                          int(train_size), bool(chat))


@register("reward", "portal_duel", description="PORTAL (reduced): mean duel score of the written behaviour tree",
          paper=PAPER)
def portal_duel_reward(sample: Sample, invalid_value: float = 0.0) -> float:
    """Mean score (win 1, draw 0.5, loss 0) of the completion's program over the example's seeded duels against its
    opponent. A malformed program (parse error, over a limit) scores ``invalid_value`` and is logged at INFO with the
    reason; it never raises."""
    meta = sample.example.meta
    if "opponent" not in meta or "duel_seeds" not in meta:
        raise ValueError("reward 'portal_duel' needs example.meta opponent and duel_seeds (use task portal_duel)")
    r = evaluate_program(extract_program(sample.completion), meta["opponent"], meta["duel_seeds"])
    if not r["valid"]:
        log.info("portal_duel: malformed program scored %s: %s", invalid_value, r["error"])
        return float(invalid_value)
    return float(r["score"])


@register("reward", "portal_valid", description="PORTAL (reduced): 1 if the completion parses as a DSL program",
          paper=PAPER)
def portal_valid_reward(sample: Sample) -> float:
    """1.0 if the completion's program parses within the sandbox limits, else 0.0 (weight 0: a logged rate)."""
    try:
        parse(extract_program(sample.completion))
        return 1.0
    except DSLError:
        return 0.0
