"""The evaluator of A2D-Sentences and JHMDB-Sentences: COCO mask mAP, precision@K and IoU, evaluation pictures, and
for samples that say whether their referred object shows (`is_ref_inst_visible`), the probability of "referred"
where it shows and where it does not."""
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

import metrics
from models.postprocessing import A2DSentencesPostProcess, binary_masks_at_input_size, mask_logits
from utils import all_gather_lists, is_main_process, safe_name, writing
from .evaluator import Evaluator
from .transforms import IMAGENET_MEAN, IMAGENET_STD
from .pictures import draw_overlay

PICTURE_MIN_HEIGHT = 240


class ReferringCOCOEvaluator(Evaluator):
    """Every object query's mask of every annotated frame is one scored prediction (the paper's protocol, as the
    original: `mAP 0.5:0.95` ...), scored by pycocotools against the dataset's COCO-format ground truth; P@K and
    IoU use each frame's top-scored mask (`metrics.compute_referring_metrics`). Up to `num_pictures` samples are
    drawn into `pictures_dir`: the top-scored mask beside the ground truth.

    Samples whose target says the referred object is absent (`is_ref_inst_visible` false: the loaders'
    `absent_referred_samples`) are left out of the COCO ground truth and of every number above. Where targets say
    it at all, the metrics include `referred_probability_present` and `referred_probability_absent`: the mean over
    those samples of the highest probability of "referred" among the object queries (what the top-scored mask is
    scored with), which should be high where the object shows and low where it does not."""
    best_metric = 'mAP 0.5:0.95'
    higher_is_better = True
    checkpoint_key = 'best_mAP'

    def __init__(self, coco_gt_path: Path, pictures_dir: Path, num_pictures: int,
                 precision_and_iou: bool = True):
        self.coco_gt_path = coco_gt_path
        self.pictures_dir = pictures_dir
        self.pictures_left = num_pictures if is_main_process() else 0
        self.precision_and_iou = precision_and_iou
        self.postprocessor = A2DSentencesPostProcess()
        self.predictions = []
        self.top_scores = {'present': [], 'absent': []}  # samples with is_ref_inst_visible only

    def update(self, batch, outputs):
        valid_indices = batch['valid_indices'].tolist()
        targets = [batch['targets'][i] for i in valid_indices]  # per valid frame, per query
        if self.pictures_left > 0:
            self._save_pictures(batch, outputs, targets[0])
        flat_outputs = {'pred_masks': mask_logits(outputs).flatten(0, 1),
                        'pred_is_referred': outputs['pred_is_referred'].flatten(0, 1)}
        flat_targets = [target for frame in targets for target in frame]
        processed = self.postprocessor(flat_outputs, batch['samples'].tensors.shape[-2:],
                                       [t['size'] for t in flat_targets], [t['orig_size'] for t in flat_targets])
        for frame, target in zip(processed, flat_targets):
            present = bool(target.get('is_ref_inst_visible', True))
            if 'is_ref_inst_visible' in target:
                self.top_scores['present' if present else 'absent'].append(frame['scores'].max().item())
            if not present:
                continue
            for score, rle in zip(frame['scores'].tolist(), frame['rle_masks']):
                self.predictions.append({'image_id': target['image_id'], 'category_id': 1, 'segmentation': rle,
                                         'score': score})

    def summarize(self) -> Optional[dict]:
        predictions = all_gather_lists(self.predictions)
        top_scores = {kind: all_gather_lists(scores) for kind, scores in self.top_scores.items()}
        if not is_main_process():
            return None
        coco_gt = metrics.read_coco_ground_truth(self.coco_gt_path)
        results = metrics.compute_referring_metrics(coco_gt, predictions, verbose=False,
                                                    precision_and_iou=self.precision_and_iou)
        for kind, scores in top_scores.items():
            if scores:
                results[f'referred_probability_{kind}'] = float(np.mean(scores))
        return results

    def describe(self, metrics):
        shown = [key for key in ('mAP 0.5:0.95', 'P@0.5', 'mean_iou', 'overall_iou', 'referred_probability_present',
                                 'referred_probability_absent') if key in metrics]
        return ', '.join(f'{key} {metrics[key]:.4f}' for key in shown)

    def _save_pictures(self, batch, outputs, targets):
        """The annotated frame (the first valid one) of each query: its top-scored mask (left) and the ground truth
        (right), the query above."""
        with writing(self.pictures_dir, 'pictures folder'):
            self.pictures_dir.mkdir(parents=True, exist_ok=True)
        samples = batch['samples']
        mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
        frame_position = batch['valid_indices'][0].item()
        for q, target in enumerate(targets[:self.pictures_left]):
            h, w = target['size'].tolist()
            video = batch['query_videos'][q].item()
            frame = ((samples.tensors[frame_position, video].cpu() * std + mean).clamp(0, 1) * 255).byte()
            image = Image.fromarray(frame.permute(1, 2, 0)[:h, :w].numpy())
            referred = outputs['pred_is_referred'][0, q].softmax(-1)[:, 0]  # [N]
            best = referred.argmax().item()
            predicted = binary_masks_at_input_size(mask_logits(outputs)[0, q, best][None, None],
                                                   samples.tensors.shape[-2:])[0, 0, :h, :w].cpu().numpy()
            truth = target['masks'][target['referred_instance_idx']].cpu().numpy()
            scale = -(-PICTURE_MIN_HEIGHT // h)  # small frames are enlarged so the caption stays readable
            if scale > 1:
                image = image.resize((w * scale, h * scale), Image.NEAREST)
                predicted, truth = (m.repeat(scale, 0).repeat(scale, 1) for m in (predicted, truth))
            caption = f'prediction ({referred[best]:.2f}): {batch["text_queries"][q]}'
            panels = [draw_overlay(image, predicted, caption, (0, 200, 0)),
                      draw_overlay(image, truth, 'ground truth', (230, 40, 40))]
            name = safe_name(str(target['image_id']).replace('/', '_').replace('\\', '_'), 'image id', 'the sample')
            path = self.pictures_dir / f'{name}.png'
            with writing(path, 'evaluation picture'):
                Image.fromarray(np.concatenate(panels, axis=1)).save(path)
            self.pictures_left -= 1


def build_coco_evaluator(config, dataset, run_dir: Path, epoch: int) -> ReferringCOCOEvaluator:
    return ReferringCOCOEvaluator(dataset.coco_gt_path, run_dir / 'pictures' / f'epoch_{epoch}', config.eval_pictures,
                                  precision_and_iou=config.calculate_precision_and_iou_metrics)
