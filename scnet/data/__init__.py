"""Data: ImageNet-layout folders checked before a run, the paper's transforms, the embedded dataset."""
