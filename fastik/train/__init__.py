"""Training of the paper's studies (``fastik train {nbody,qm9,modelnet}``): loop, models, tasks."""
from .loop import Task, TrainConfig, evaluate, load_checkpoint, train

__all__ = ["Task", "TrainConfig", "train", "evaluate", "load_checkpoint"]
