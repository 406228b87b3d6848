"""Figures of scnet runs: training curves (``plot_runs``) from ``RUN_DIR/metrics.jsonl``."""
from scnet.visual.curves import MetricsError, plot_runs, read_metrics, run_model, summarize

__all__ = ['MetricsError', 'plot_runs', 'read_metrics', 'run_model', 'summarize']
