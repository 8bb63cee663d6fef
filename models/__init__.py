"""The MTTR network, its loss and its post-processing, built from the run's config."""
from pathlib import Path
from typing import Union

from config import Config, as_config
from models.mttr import MTTR
from models.multimodal_transformer import MultimodalTransformer
from models.swin_transformer import build_backbone
from models.text_encoder import build_text_encoder


def build_network(config) -> MTTR:
    """The network alone (a Config, or the original's config namespace: see `config.as_config`). The Kinetics
    backbone weights and the pretrained RoBERTa weights are read when the config's backbone_pretrained /
    text_encoder_pretrained say so."""
    config = as_config(config)
    backbone = build_backbone(pretrained=config.backbone_pretrained, pretrained_path=config.backbone_pretrained_path,
                              train_backbone=config.train_backbone, embed_dim=config.swin_embed_dim,
                              depths=config.swin_depths, num_heads=config.swin_num_heads,
                              window_size=config.swin_window_size,
                              activation_checkpointing=config.backbone_activation_checkpointing)
    text_encoder, tokenizer = build_text_encoder(config.text_encoder_type, config.text_encoder_pretrained)
    transformer = MultimodalTransformer(text_encoder, tokenizer, num_encoder_layers=config.num_encoder_layers,
                                        num_decoder_layers=config.num_decoder_layers, d_model=config.d_model,
                                        nheads=config.nheads, dim_feedforward=config.dim_feedforward,
                                        dropout=config.dropout, freeze_text_encoder=config.freeze_text_encoder)
    return MTTR(backbone, transformer, config.num_queries, config.mask_kernels_dim, config.aux_loss)


def build_model(config):
    """Returns `(model, criterion, postprocessor)`, as the original's `build_model(args)`: `config` is a Config or
    the original's config namespace (`config.as_config`)."""
    from models import criterion, postprocessing
    config = as_config(config)
    return build_network(config), criterion.build(config), postprocessing.build(config)


def build_trained_network(config: Config, checkpoint: Union[str, Path, dict]) -> MTTR:
    """The network with a checkpoint's weights (a file, read with weights_only=True, or a checkpoint dict), in eval
    mode on `config.device`: what inference, the demo and torch.hub use."""
    model = build_network(config)
    load_model_weights(model, checkpoint)
    return model.to(config.device).eval()


def load_model_weights(model, checkpoint_or_path):
    """Load weights into `model` (strict) from a checkpoint dict or file: an official MTTR checkpoint (a dict with
    'model_state_dict'), one of ours, or a bare state_dict. A mismatch lists the missing and unexpected keys."""
    from utils import read_checkpoint
    source = checkpoint_or_path if isinstance(checkpoint_or_path, dict) else read_checkpoint(checkpoint_or_path)
    name = 'the checkpoint' if isinstance(checkpoint_or_path, dict) else str(checkpoint_or_path)
    state_dict = source.get('model_state_dict', source) if isinstance(source, dict) else source
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise ValueError(f"{name} holds no model weights (it holds a {type(source).__name__}): expected a dict with "
                         f"'model_state_dict' or a state_dict")
    expected = set(model.state_dict())
    missing = sorted(expected - set(state_dict) - {'transformer.text_encoder.embeddings.position_ids'})
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        def listing(keys):
            return ', '.join(keys[:10]) + (f' ... ({len(keys)} in all)' if len(keys) > 10 else '') or 'none'
        raise KeyError(f'{name} does not fit this model (check the config it was trained with): '
                       f'missing keys: {listing(missing)}; unexpected keys: {listing(unexpected)}')
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f'{name} does not fit this model: {error}') from error
    return source
