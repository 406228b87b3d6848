"""A COCO keypoint split as the people a run trains or evaluates on: checked, with its keypoint definition."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Tuple

from scnet.tasks.coco_files import CocoDataError, check_images, load_coco
from scnet.tasks.pose.data import Instance, KeypointSpec, complete_annotations, gt_instances, load_detections

__all__ = ['load_split', 'check_same_keypoints', 'val_instances']


def load_split(ann: str, images: str) -> Tuple[Any, KeypointSpec]:
    """The checked annotation file (a ``COCO``) and the keypoints it defines; every image it lists is opened
    (``check_images``: readable, of the size the file gives) before anything is built."""
    try:
        coco = load_coco(Path(ann), Path(images), task='keypoints')
    except KeyError as e:   # pycocotools indexes by fields load_coco does not check (an annotation's "id")
        raise CocoDataError(f'{ann}: an image, annotation or category lacks the {e} field that COCO files '
                            'have') from None
    check_images(coco, Path(images), ann)
    complete_annotations(coco)
    return coco, KeypointSpec.from_coco(coco, ann)


def check_same_keypoints(spec: KeypointSpec, other: KeypointSpec, what: str, source: str) -> None:
    """A ``CocoDataError`` when ``source``'s keypoints (``other``) are not ``what``'s (``spec``)."""
    if spec.names != other.names:
        raise CocoDataError(f'{source}: its keypoints ({other.num}: {", ".join(other.names[:6])}...) differ from '
                            f'{what} ({spec.num}: {", ".join(spec.names[:6])}...)')


def val_instances(coco, spec: KeypointSpec, recipe_like, images_dir: str, boxes: Optional[str]) -> List[Instance]:
    """The people to evaluate: the detected ``boxes`` (a COCO results file) or the ground-truth ones, as crops
    of ``recipe_like``'s ``image_size`` and ``box_padding``."""
    h, w = recipe_like.image_size
    if boxes:
        out = load_detections(Path(boxes), coco, spec, w / h, Path(images_dir),
                              score_thresh=recipe_like.box_score_thresh, padding=recipe_like.box_padding)
        if not out:
            raise CocoDataError(f'{boxes}: no person boxes (category {spec.category_id}) scoring at least '
                                f'{recipe_like.box_score_thresh} for the images of the annotation file')
        return out
    out = gt_instances(coco, Path(images_dir), spec, w / h, recipe_like.box_padding, with_keypoints=False)
    if not out:
        raise CocoDataError('the validation annotations hold no person with labelled keypoints')
    return out
