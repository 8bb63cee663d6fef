"""Text queries longer than the text encoder takes are cut to its maximum, with a warning; shorter ones are
tokenised as before. A small RoBERTa with 40 position embeddings (38 tokens) and the tests' tiny tokenizer stands in
for roberta-base."""
import warnings

import pytest
import torch
from transformers import AutoTokenizer, RobertaConfig, RobertaModel

from models import build_network
from models.multimodal_transformer import MultimodalTransformer, TextQueryTruncatedWarning, max_text_tokens
from tests.helpers import network_config, write_tiny_text_encoder
from utils import NestedTensor

MAX_TOKENS = 38  # 40 position embeddings, numbered from padding_idx + 1 = 2
LONG_QUERY = ' '.join(['the dog'] * 2500)  # 5000 words, one token each: 5002 tokens with <s> and </s>


def words(query, count):
    return ' '.join(query.split()[:count])


@pytest.fixture(scope='module')
def text_encoder_dir(tmp_path_factory):
    """A local model directory (config, weights, the tiny tokenizer) for a tiny RoBERTa."""
    directory = write_tiny_text_encoder(tmp_path_factory.mktemp('tiny_roberta'), MAX_TOKENS + 2)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig.from_pretrained(directory), add_pooling_layer=False).save_pretrained(directory)
    return directory


def small_transformer(text_encoder_dir, tokenizer):
    """A fresh transformer (empty tokenisation caches) on the tiny RoBERTa."""
    text_encoder = RobertaModel.from_pretrained(text_encoder_dir, add_pooling_layer=False)
    torch.manual_seed(0)
    return MultimodalTransformer(text_encoder, tokenizer, num_encoder_layers=1, num_decoder_layers=1, d_model=32,
                                 nheads=2, dim_feedforward=64).eval()


@pytest.fixture
def transformer(text_encoder_dir):
    return small_transformer(text_encoder_dir, AutoTokenizer.from_pretrained(text_encoder_dir))


def encode_text(transformer, queries):
    with torch.inference_mode():
        return transformer.forward_text(queries, torch.device('cpu'))


def truncation_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, TextQueryTruncatedWarning)]


def test_maximum_comes_from_the_text_encoder_config(shared_dir, transformer):
    roberta_base = RobertaConfig.from_json_file(shared_dir / 'parity' / 'roberta-base-config.json')
    assert (roberta_base.max_position_embeddings, roberta_base.pad_token_id) == (514, 1)
    assert max_text_tokens(roberta_base) == 512
    assert transformer.max_text_tokens == MAX_TOKENS


def test_long_query_is_cut_to_the_maximum_with_a_warning(transformer):
    cut_query = words(LONG_QUERY, MAX_TOKENS - 2)
    assert len(transformer.tokenizer(LONG_QUERY, verbose=False)['input_ids']) == 5002
    with pytest.warns(TextQueryTruncatedWarning, match=rf'5002 tokens, more than the {MAX_TOKENS}'):
        long_memory, long_mask = encode_text(transformer, [LONG_QUERY])
    cut_memory, cut_mask = encode_text(transformer, [cut_query])
    assert long_memory.shape[0] == MAX_TOKENS
    assert torch.equal(long_memory, cut_memory)
    assert torch.equal(long_mask, cut_mask)
    # the cut ends like every tokenised query, with </s>
    input_ids, _ = transformer._tokenize((LONG_QUERY,))
    assert torch.equal(input_ids, transformer.tokenizer([cut_query], return_tensors='pt')['input_ids'])


def test_query_at_the_maximum_is_kept_whole_and_one_more_token_is_cut(transformer):
    at_maximum, one_more = words(LONG_QUERY, MAX_TOKENS - 2), words(LONG_QUERY, MAX_TOKENS - 1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        input_ids, _ = transformer._tokenize((at_maximum, 'a cat'))
    assert truncation_warnings(record) == []
    assert torch.equal(input_ids, transformer.tokenizer([at_maximum, 'a cat'], padding='longest',
                                                       return_tensors='pt')['input_ids'])
    with pytest.warns(TextQueryTruncatedWarning, match=rf'{MAX_TOKENS + 1} tokens, more than the {MAX_TOKENS}'):
        transformer._tokenize((one_more,))


def test_warning_comes_once_per_distinct_query(transformer):
    other_long_query = ' '.join(['a cat'] * 30)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        encode_text(transformer, [LONG_QUERY])
        encode_text(transformer, [LONG_QUERY])
        encode_text(transformer, [LONG_QUERY, 'a cat'])  # another batch: tokenised anew, but no second warning
        encode_text(transformer, ['a cat', other_long_query])
    messages = truncation_warnings(record)
    assert len(messages) == 2
    assert '5002 tokens' in messages[0] and '62 tokens' in messages[1]


def test_queries_within_the_maximum_tokenise_as_before(text_encoder_dir, shared_dir, golden):
    # the tokenizer the golden queries were tokenised with (only tokenising here: its ids exceed the tiny vocabulary)
    original_tokenizer = AutoTokenizer.from_pretrained(shared_dir / 'parity' / 'tokenizer')
    transformer = small_transformer(text_encoder_dir, original_tokenizer)
    for case in ('single', 'padded'):
        inputs = golden['cases'][case]['inputs']
        plain = transformer.tokenizer(list(inputs['text_queries']), padding='longest', return_tensors='pt')
        input_ids, attention_mask = transformer._tokenize(tuple(inputs['text_queries']))
        assert torch.equal(input_ids, plain['input_ids'])
        assert torch.equal(attention_mask, plain['attention_mask'])
        assert torch.equal(input_ids, inputs['input_ids'])  # what the original's tokenizer gave
        assert torch.equal(attention_mask, inputs['attention_mask'])


def test_network_segments_with_a_long_query_as_with_the_query_cut(text_encoder_dir):
    config = network_config(text_encoder_dir, swin_embed_dim=16, swin_depths=[2, 2, 2, 2],
                            swin_num_heads=[1, 2, 4, 8], d_model=64, nheads=2, dim_feedforward=64, num_queries=5)
    torch.manual_seed(1)
    model = build_network(config).eval()
    samples = NestedTensor(torch.randn(2, 1, 3, 64, 64), torch.zeros(2, 1, 64, 64, dtype=torch.bool))
    with pytest.warns(TextQueryTruncatedWarning, match='5002 tokens'):
        long = model.segment(samples, torch.tensor([0, 1]), [LONG_QUERY, 'a cat'])
    cut = model.segment(samples, torch.tensor([0, 1]), [words(LONG_QUERY, MAX_TOKENS - 2), 'a cat'])
    for key in ('pred_masks', 'pred_is_referred'):
        assert torch.equal(long[key], cut[key]), key
