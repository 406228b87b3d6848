"""Object detection and instance segmentation with a zoo backbone (the paper's section 4.3, Table 4).

torchvision's Faster R-CNN (``task='bbox'``) or Mask R-CNN (``task='segm'``) on an FPN over the four stages
of any zoo model, trained on COCO-format files and evaluated with pycocotools. One idea per module:
``recipe`` (the settings), ``data`` (COCO files as the detector's inputs), ``model`` (the detector),
``engine`` (one training epoch), ``evaluate`` (COCO metrics), ``run`` (a training run), ``checkpoint`` (what
a checkpoint says about itself, and the detector rebuilt from it), ``draw`` (``predict``: detections drawn on
images).
"""
from scnet.tasks.detection.checkpoint import DetectionMetadata, load_detector
from scnet.tasks.detection.evaluate import METRICS, coco_metrics, evaluate_checkpoint, evaluate_detector
from scnet.tasks.detection.model import build_detector
from scnet.tasks.detection.draw import draw_detections, predict
from scnet.tasks.detection.recipe import (DETECTION_RECIPES_DIR, TASKS, DetectionRecipe, list_detection_recipes,
                                          load_detection_recipe)
from scnet.tasks.detection.run import train_detector

__all__ = ['TASKS', 'METRICS', 'DetectionRecipe', 'load_detection_recipe', 'list_detection_recipes',
           'build_detector', 'train_detector', 'evaluate_detector', 'coco_metrics', 'load_detector',
           'DetectionMetadata', 'evaluate_checkpoint', 'predict', 'draw_detections', 'DETECTION_RECIPES_DIR']
