"""Training and evaluation of classifiers with the paper's recipes, on one process or many (torchrun)."""
