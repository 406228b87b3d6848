"""The one JSON shape in which ``scnet detect eval`` and ``scnet pose eval`` report a checkpoint's metrics.

A script that reads the results of both tasks (or compares backbones across them) finds the same top-level
keys in each; what differs between the tasks lives inside them: ``metrics`` holds the pycocotools numbers
under the names the training logs use (``bbox_AP`` ..., ``segm_AP`` ..., ``kpt_AP`` ...), ``counts`` what was
found (detections; crops and people), ``settings`` how the checkpoint was run (image sizes, boxes, flip test).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict

__all__ = ['EvalReport']


@dataclass
class EvalReport:
    task: str                      # bbox, segm or pose
    checkpoint: str
    backbone: str
    annotations: str               # the COCO annotation file evaluated against
    images: int                    # images evaluated
    metrics: Dict[str, float]      # percent; -1 where the data has nothing of that size range
    counts: Dict[str, int] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)
    eval_time_s: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
