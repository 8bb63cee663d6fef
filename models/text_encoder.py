"""The RoBERTa text encoder and its tokenizer, from the Hugging Face hub or a local directory."""
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, RobertaModel

OFFLINE_HELP = (
    'text_encoder_type must be a Hugging Face hub name (e.g. roberta-base, downloaded once into the HF cache) '
    'or a local directory holding config.json and the tokenizer files (plus the weights when '
    'text_encoder_pretrained is true). To work offline, save it once on a machine with internet, e.g. '
    "`python -c \"from transformers import AutoModel, AutoTokenizer; AutoModel.from_pretrained('roberta-base')"
    ".save_pretrained('roberta-base-local'); AutoTokenizer.from_pretrained('roberta-base')"
    ".save_pretrained('roberta-base-local')\"`, then set text_encoder_type: roberta-base-local. "
    'Evaluating a checkpoint needs only config.json and the tokenizer (text_encoder_pretrained: false).')

POSITION_IDS = 'embeddings.position_ids'


def build_text_encoder(text_encoder_type: str, pretrained: bool):
    """Return `(RobertaModel without pooler, fast tokenizer)`.

    The architecture and tokenizer always come from `text_encoder_type`; the pretrained weights are loaded only
    when `pretrained` is true (a checkpoint that holds them does not need them).
    """
    source = 'local directory' if Path(text_encoder_type).is_dir() else 'Hugging Face hub name'
    try:
        tokenizer = AutoTokenizer.from_pretrained(text_encoder_type, use_fast=True)
        if pretrained:
            model = RobertaModel.from_pretrained(text_encoder_type, add_pooling_layer=False)
        else:
            model = RobertaModel(AutoConfig.from_pretrained(text_encoder_type), add_pooling_layer=False)
    except (OSError, ValueError) as error:
        raise OSError(f'could not load the text encoder {text_encoder_type!r} ({source}, '
                      f'text_encoder_pretrained={pretrained}): {error}\n{OFFLINE_HELP}') from error
    # The official checkpoints (transformers 4.11) store embeddings.position_ids; current transformers keeps it
    # out of the state_dict. Keep it persistent so our checkpoints have the official keys both ways.
    embeddings = model.embeddings
    embeddings.register_buffer('position_ids', embeddings.position_ids, persistent=True)
    return model, tokenizer
