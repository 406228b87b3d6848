"""Downstream tasks of section 4.3: SCNet as the backbone of detectors, segmenters and pose estimators."""
