"""What every dataset's evaluator provides to the trainer (see datasets/__init__.py for how one is registered)."""
from typing import Dict, Optional


class Evaluator:
    """The evaluation of one test split after one epoch (or of one checkpoint).

    The trainer runs the network on every batch of the split, each process on its own share, and hands the
    outputs to `update`; then every process calls `summarize`, which gathers what the processes collected and
    returns the metrics on the main process (None on the others). Evaluators are built anew for each evaluation
    (`build_evaluator(config, dataset, run_dir, epoch)`) and write their files (predictions, pictures,
    submissions) under the run directory only.

    The class attributes give the rule for `best.pth.tar`: `best_score` picks the number, `higher_is_better` its
    direction, and `checkpoint_key` the name checkpoints store it under (the original's `best_mAP` /
    `best_loss`, so the original code reads our checkpoints).
    """
    best_metric: str = ''
    higher_is_better: bool = True
    checkpoint_key: str = 'best_score'

    def update(self, batch: dict, outputs: Dict[str, object]):
        """batch: what the dataset's collator made (`samples`, `valid_indices`, `targets`, `text_queries`, ...);
        outputs: the final decoder layer's `pred_masks` [T', B, N, h, w] and `pred_is_referred` [T', B, N, 2]
        for the batch's `valid_indices` frames, in float32."""
        raise NotImplementedError

    def summarize(self) -> Optional[dict]:
        raise NotImplementedError

    def best_score(self, metrics: dict, train_losses: dict) -> float:
        """The score that decides whether this epoch's checkpoint is the best so far."""
        return metrics[self.best_metric]

    def describe(self, metrics: dict) -> str:
        """A few of the metrics, for the line that ends a training run."""
        return f'{self.best_metric} {metrics[self.best_metric]:.4f}'
