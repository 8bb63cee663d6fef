"""The multimodal transformer: a DETR-style encoder over each frame's visual tokens followed by the text tokens,
and a decoder whose object queries attend to that joint memory."""
import copy
import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from models.position_encoding import PositionEmbeddingSine2D


class TextQueryTruncatedWarning(UserWarning):
    """A text query has more tokens than the text encoder has positions; only its first tokens are used."""


def max_text_tokens(text_encoder_config) -> int:
    """How many tokens (special tokens included) the text encoder takes. RoBERTa numbers positions from
    padding_idx + 1, so roberta-base's 514 position embeddings hold 512 tokens."""
    return text_encoder_config.max_position_embeddings - text_encoder_config.pad_token_id - 1


def _with_pos(tensor, pos):
    return tensor if pos is None else tensor + pos


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer; positions are added to queries and keys only."""

    def __init__(self, d_model, nheads, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src, src_key_padding_mask=None, pos=None):
        q = k = _with_pos(src, pos)
        src2 = self.self_attn(q, k, value=src, key_padding_mask=src_key_padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class TransformerDecoderLayer(nn.Module):
    def __init__(self, d_model, nheads, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        q = k = _with_pos(tgt, query_pos)
        tgt2 = self.self_attn(q, k, value=tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.multihead_attn(query=_with_pos(tgt, query_pos), key=_with_pos(memory, pos), value=memory,
                                   key_padding_mask=memory_key_padding_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class TransformerEncoder(nn.Module):
    def __init__(self, encoder_layer, num_layers):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])

    def forward(self, src, src_key_padding_mask=None, pos=None):
        for layer in self.layers:
            src = layer(src, src_key_padding_mask=src_key_padding_mask, pos=pos)
        return src


class TransformerDecoder(nn.Module):
    """Returns every layer's output after the shared final norm: [num_layers, N, batch, d_model]."""

    def __init__(self, decoder_layer, num_layers, norm):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(decoder_layer) for _ in range(num_layers)])
        self.norm = norm

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        intermediate = []
        output = tgt
        for layer in self.layers:
            output = layer(output, memory, memory_key_padding_mask=memory_key_padding_mask, pos=pos,
                           query_pos=query_pos)
            intermediate.append(self.norm(output))
        return torch.stack(intermediate)


class FeatureResizer(nn.Module):
    """Projects the text encoder's features to the transformer width: Linear, LayerNorm, Dropout."""

    def __init__(self, input_feat_size, output_feat_size, dropout):
        super().__init__()
        self.fc = nn.Linear(input_feat_size, output_feat_size, bias=True)
        self.layer_norm = nn.LayerNorm(output_feat_size, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, encoder_features):
        return self.dropout(self.layer_norm(self.fc(encoder_features)))


class MultimodalTransformer(nn.Module):
    def __init__(self, text_encoder, tokenizer, *, num_encoder_layers=3, num_decoder_layers=3, d_model=256, nheads=8,
                 dim_feedforward=2048, dropout=0.1, freeze_text_encoder=True):
        super().__init__()
        self.d_model = d_model
        self.encoder = TransformerEncoder(
            TransformerEncoderLayer(d_model, nheads, dim_feedforward, dropout), num_encoder_layers)
        self.decoder = TransformerDecoder(
            TransformerDecoderLayer(d_model, nheads, dim_feedforward, dropout), num_decoder_layers,
            norm=nn.LayerNorm(d_model))
        self.pos_encoder_2d = PositionEmbeddingSine2D()
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.max_text_tokens = max_text_tokens(text_encoder.config)
        # every window of a video, and every epoch, asks again for the same queries
        self._tokenize = lru_cache(maxsize=4096)(self._tokenize_uncached)
        self._warn_truncated = lru_cache(maxsize=4096)(self._warn_truncated_uncached)  # once per query
        self.freeze_text_encoder = freeze_text_encoder
        if freeze_text_encoder:
            self.text_encoder.requires_grad_(False)
        self.txt_proj = FeatureResizer(text_encoder.config.hidden_size, d_model, dropout)

    def forward(self, vid_embeds, vid_pad_mask, text_queries, obj_queries):
        """vid_embeds [T, B, C, H, W], vid_pad_mask [T, B, H, W], text_queries: B strings, obj_queries [N, C].
        B counts text queries: several queries on one video come with that video's features repeated along B
        (expanded, e.g. by `MTTR.decode`).

        Returns hs [num_decoder_layers, T, B, N, C], vid_memory [T, B, C, H, W] and txt_memory (a list of T*B
        tensors [S_i, C] without the text padding).
        """
        t, b, _, h, w = vid_embeds.shape
        txt_memory, txt_pad_mask = self.forward_text(text_queries, vid_embeds.device)
        txt_memory = repeat(txt_memory, 's b c -> s (t b) c', t=t)
        txt_pad_mask = repeat(txt_pad_mask, 'b s -> (t b) s', t=t)

        # per frame, the visual tokens followed by the text tokens
        vid_embeds = rearrange(vid_embeds, 't b c h w -> (h w) (t b) c')
        encoder_src_seq = torch.cat((vid_embeds, txt_memory), dim=0)
        seq_mask = torch.cat((rearrange(vid_pad_mask, 't b h w -> (t b) (h w)'), txt_pad_mask), dim=1)
        vid_pos_embed = self.pos_encoder_2d(rearrange(vid_pad_mask, 't b h w -> (t b) h w'), self.d_model)
        pos_embed = torch.cat((rearrange(vid_pos_embed, 't_b h w c -> (h w) t_b c'),
                               torch.zeros_like(txt_memory)), dim=0)  # text tokens get no position

        memory = self.encoder(encoder_src_seq, src_key_padding_mask=seq_mask, pos=pos_embed)  # [S, T*B, C]
        vid_memory = rearrange(memory[:h * w], '(h w) (t b) c -> t b c h w', h=h, w=w, t=t, b=b)
        txt_memory = rearrange(memory[h * w:], 's t_b c -> t_b s c')
        txt_memory = [t_mem[~pad_mask] for t_mem, pad_mask in zip(txt_memory, txt_pad_mask)]

        obj_queries = repeat(obj_queries, 'n c -> n (t b) c', t=t, b=b)
        tgt = torch.zeros_like(obj_queries)
        hs = self.decoder(tgt, memory, memory_key_padding_mask=seq_mask, pos=pos_embed, query_pos=obj_queries)
        hs = rearrange(hs, 'l n (t b) c -> l t b n c', t=t, b=b)
        return hs, vid_memory, txt_memory

    def forward_text(self, text_queries, device):
        """Returns the projected text memory [S, B, C] and its padding mask [B, S] (True on padding)."""
        input_ids, attention_mask = (t.to(device) for t in self._tokenize(tuple(text_queries)))
        # A frozen encoder runs without autograd; no_grad (not inference_mode) lets txt_proj train in fp32.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_text_encoder):
            encoded_text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        txt_memory = rearrange(encoded_text.last_hidden_state, 'b s c -> s b c')
        txt_memory = self.txt_proj(txt_memory)
        txt_pad_mask = attention_mask.ne(1)
        return txt_memory, txt_pad_mask

    def _tokenize_uncached(self, text_queries):
        """`(input_ids, attention_mask)` [B, S] of a tuple of queries, padded to the longest; a query longer than
        the text encoder takes is cut to its first `max_text_tokens` tokens (with a warning)."""
        with torch.inference_mode(False):  # cached: must serve training as well as evaluation
            tokenized = self.tokenizer(list(text_queries), padding='longest', truncation=True,
                                       max_length=self.max_text_tokens, return_tensors='pt')
        for query, num_tokens in zip(text_queries, tokenized['attention_mask'].sum(dim=1).tolist()):
            if num_tokens == self.max_text_tokens:  # at the limit: maybe cut
                self._warn_truncated(query)
        return tokenized['input_ids'], tokenized['attention_mask']

    def _warn_truncated_uncached(self, query):
        num_tokens = len(self.tokenizer(query, verbose=False)['input_ids'])
        if num_tokens > self.max_text_tokens:
            shown = query if len(query) <= 60 else query[:60] + '...'
            warnings.warn(f'the text query {shown!r} has {num_tokens} tokens, more than the {self.max_text_tokens} '
                          f'the text encoder takes: only its first {self.max_text_tokens} tokens are used',
                          TextQueryTruncatedWarning, stacklevel=2)
