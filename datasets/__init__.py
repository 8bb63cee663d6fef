"""The datasets: `build_dataset(image_set, dataset_name, **config)`.

Every dataset is a torch Dataset with a `collator` attribute to give the DataLoader (see
`transforms.collate_videos` for the batch it makes). A2D-Sentences (test) and JHMDB-Sentences also have
`coco_gt_path`, the COCO-format ground truth the evaluation loads with pycocotools.
"""
from .a2d_sentences import A2DSentencesDataset
from .jhmdb_sentences import JHMDBSentencesDataset
from .refer_youtube_vos import ReferYouTubeVOSDataset
from .transforms import build_transforms


def build_dataset(image_set: str, dataset_name: str, *, dataset_path: str, window_size: int,
                  resize_and_crop_augmentations: bool, horizontal_flip_augmentations: bool, train_short_size: int,
                  train_max_size: int, eval_short_size: int, eval_max_size: int, cache_dir: str,
                  dataset_coco_gt_format_path, samples_metadata_path, generate_new_samples_metadata: bool,
                  seed: int, output_dir: str, valid_video_ids_path, **other_config):
    """`image_set` is 'train' or 'test'; the keyword arguments are the config's keys: `**config.to_dict()`."""
    if image_set not in ('train', 'test'):
        raise ValueError(f"image_set must be 'train' or 'test', got {image_set!r}")
    transforms = build_transforms(image_set, resize_and_crop_augmentations, horizontal_flip_augmentations,
                                  train_short_size, train_max_size, eval_short_size, eval_max_size)
    if dataset_name == 'a2d_sentences':
        return A2DSentencesDataset(image_set, dataset_path, window_size, transforms, cache_dir,
                                   coco_gt_path=dataset_coco_gt_format_path)
    if dataset_name == 'jhmdb_sentences':
        if image_set != 'test':
            raise ValueError('jhmdb_sentences is used for evaluation only (image_set test); train on a2d_sentences')
        return JHMDBSentencesDataset(dataset_path, window_size, transforms, cache_dir,
                                     samples_metadata_path=samples_metadata_path,
                                     generate_new_samples_metadata=generate_new_samples_metadata, seed=seed,
                                     output_dir=output_dir, coco_gt_path=dataset_coco_gt_format_path)
    if dataset_name == 'ref_youtube_vos':
        return ReferYouTubeVOSDataset(image_set, dataset_path, window_size, transforms, cache_dir,
                                      valid_video_ids_path=valid_video_ids_path)
    raise ValueError(f"dataset_name must be 'a2d_sentences', 'jhmdb_sentences' or 'ref_youtube_vos', "
                     f'got {dataset_name!r}')
