"""``triplet_f1``: the scene-graph reward of the ``or_scene_graph`` task — F1 of the completion's
subject,predicate,object triplets against the gold graph in ``example.answer`` — after the triplet-F1 evaluation of
"ORacle: Large Vision-Language Models for Knowledge-Guided Holistic OR Domain Modeling" (arXiv 2404.07031). Malformed
output scores 0 and never raises; duplicates and junk pieces count as false positives."""

from __future__ import annotations

from entropo.registry import register
from entropo.tasks.or_scene_graph import triplet_f1 as _f1
from entropo.types import Sample


@register("reward", "triplet_f1", description="F1 of predicted subject,predicate,object triplets vs the gold graph")
def triplet_f1(sample: Sample, scale: float = 1.0) -> float:
    """``scale`` × triplet F1 of ``sample.completion`` against ``sample.example.answer`` (a serialized graph)."""
    gold = sample.example.answer
    if gold is None:
        raise ValueError("reward 'triplet_f1' needs example.answer (the gold graph 'subject,predicate,object;...')")
    return float(scale) * _f1(sample.completion, gold)
