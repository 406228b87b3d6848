"""Figures: training curves of runs (``plot_runs``, the paper's Fig. 5), and what a network sees: Grad-CAM
(Figs. 1, 6), the strongest feature maps of a layer (Fig. 3), res3 side-output score maps (Fig. 4) and the
effective receptive field of each stage (the paper's claim of enlarged fields of view, measured)."""
from scnet.visual.cam import ClassMaps, compare_models, grad_cam
from scnet.visual.curves import MetricsError, plot_runs, read_metrics, run_model, summarize
from scnet.visual.erf import (ErfStage, calibrate_batch_norm, effective_receptive_field, mass_radius,
                              measure_models, write_erf)
from scnet.visual.features import compare_features, feature_maps, strongest_channels
from scnet.visual.images import BadImageError, Preprocessing, load_image, overlay
from scnet.visual.loading import ClassError, LoadedModel, load_model, parse_model_spec
from scnet.visual.side_output import load_side_head, side_output_maps
from scnet.visual.targets import InputError, LayerError, image_batch, layer_choices, resolve_layer

__all__ = ['MetricsError', 'plot_runs', 'read_metrics', 'run_model', 'summarize',
           'ClassMaps', 'grad_cam', 'compare_models',
           'feature_maps', 'strongest_channels', 'compare_features',
           'load_side_head', 'side_output_maps',
           'ErfStage', 'effective_receptive_field', 'mass_radius', 'calibrate_batch_norm', 'measure_models',
           'write_erf',
           'BadImageError', 'Preprocessing', 'load_image', 'overlay',
           'ClassError', 'LoadedModel', 'load_model', 'parse_model_spec',
           'InputError', 'LayerError', 'image_batch', 'layer_choices', 'resolve_layer']
