"""Measuring speed: the models side by side (``scnet benchmark``), the machine's matrix-multiply rate, peak
memory, and the input pipeline. One module per concern: ``timing`` (interleaved repeats and their summary),
``machine`` (facts that make a figure reproducible), ``memory`` (peak memory per step), ``cases`` (what one
timed step is), ``cuda_graph`` (an inference call replayed from a captured CUDA graph), ``runner`` (the
whole comparison as a JSON-ready report), ``pipeline`` (decode + augment)."""
