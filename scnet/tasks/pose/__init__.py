"""Top-down human keypoints with a zoo backbone: simple baselines (Xiao et al. 2018; the paper's Table 5).

One idea per module: ``recipe`` (the settings), ``data`` (crops, heatmap targets, augmentation), ``splits``
(a COCO keypoint file as the people to train or evaluate on), ``model`` (the network), ``engine`` (one
training epoch), ``evaluate`` (OKS metrics), ``run`` (a training run), ``checkpoint`` (what a checkpoint says
about itself, and the network rebuilt from it), ``draw`` (keypoints drawn on images: ``predict_pose``).
"""
from scnet.tasks.pose.checkpoint import PoseCheckpoint, PoseMetadata, load_pose_checkpoint
from scnet.tasks.pose.evaluate import METRICS, evaluate_pose, evaluate_pose_checkpoint
from scnet.tasks.pose.model import build_pose_model
from scnet.tasks.pose.draw import predict_pose
from scnet.tasks.pose.recipe import (POSE_RECIPES_DIR, PoseError, PoseRecipe, list_pose_recipes, load_pose_recipe,
                                     parse_image_size)
from scnet.tasks.pose.run import train_pose

__all__ = ['PoseRecipe', 'POSE_RECIPES_DIR', 'list_pose_recipes', 'load_pose_recipe', 'parse_image_size',
           'train_pose', 'load_pose_checkpoint', 'PoseCheckpoint', 'PoseMetadata', 'evaluate_pose',
           'evaluate_pose_checkpoint', 'predict_pose', 'build_pose_model', 'METRICS', 'PoseError']
