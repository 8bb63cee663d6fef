"""The network against the original: state_dict manifest, golden forward outputs, checkpoint formats."""
import collections
import json

import pytest
import torch

from models import build_network, load_model_weights
from models.swin_transformer import VideoSwinBackbone, adapt_kinetics_state_dict, load_kinetics_weights
from models.text_encoder import build_text_encoder
from tests.helpers import (TINY_INFERENCE_MODEL, max_relative_error, network_config, parity_config,
                           write_tiny_text_encoder)
from utils import NestedTensor, autocast, autocast_dtype, save_checkpoint

POSITION_IDS_KEY = 'transformer.text_encoder.embeddings.position_ids'


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    """A network of the tiny size on a tiny text encoder: a model to load checkpoints into without the parity
    data."""
    text_encoder = write_tiny_text_encoder(tmp_path_factory.mktemp('text_encoder'))
    return build_network(network_config(text_encoder, **TINY_INFERENCE_MODEL))


@pytest.fixture(scope='module')
def manifest(shared_dir):
    return json.loads((shared_dir / 'parity' / 'mttr_state_dict.json').read_text())


def test_state_dict_has_the_official_keys_and_shapes(model, manifest):
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    official = {e['key']: e['shape'] for e in manifest['entries']}
    assert ours == official
    assert sum(p.numel() for p in model.parameters()) == manifest['num_parameters']
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == manifest['num_trainable_parameters']


def test_state_dict_order_matches_outside_roberta(model, manifest):
    def outside_roberta(keys):
        return [k for k in keys if not k.startswith('transformer.text_encoder.')]
    assert outside_roberta(model.state_dict()) == outside_roberta(e['key'] for e in manifest['entries'])
    # RoBERTa's own entries sit where the original has them: between the decoder and txt_proj
    keys = list(model.state_dict())
    roberta = [i for i, k in enumerate(keys) if k.startswith('transformer.text_encoder.')]
    assert keys[roberta[0] - 1] == 'transformer.decoder.norm.bias'
    assert keys[roberta[-1] + 1] == 'transformer.txt_proj.fc.weight'
    assert roberta == list(range(roberta[0], roberta[-1] + 1))


def golden_samples(inputs, device):
    return NestedTensor(inputs['samples'], inputs['mask']).to(device), inputs['valid_indices'].to(device)


@pytest.mark.parametrize('case', ['single', 'padded'])
def test_forward_matches_the_original(model, golden, device, case):
    inputs, expected = golden['cases'][case]['inputs'], golden['cases'][case]['outputs']
    with torch.inference_mode():
        out = model(*golden_samples(inputs, device), inputs['text_queries'])
    pairs = [(out, expected)] + list(zip(out['aux_outputs'], expected['aux_outputs']))
    assert len(out['aux_outputs']) == len(expected['aux_outputs']) == 2
    for ours, theirs in pairs:
        for key in ('pred_masks', 'pred_is_referred'):
            assert ours[key].shape == theirs[key].shape
            assert max_relative_error(ours[key], theirs[key]) <= 1e-4, key


def test_text_queries_change_the_output(model, golden, device):
    """The tolerance above is meaningful: another query moves the masks far more than 1e-4."""
    inputs, expected = golden['cases']['single']['inputs'], golden['cases']['single']['outputs']
    with torch.inference_mode():
        out = model(*golden_samples(inputs, device), ['a dog'])
    assert max_relative_error(out['pred_masks'], expected['pred_masks']) > 1e-3


@pytest.mark.parametrize('amp_dtype', ['float16', 'bfloat16'])
def test_forward_under_the_trainers_autocast_stays_finite(model, golden, shared_dir, device, amp_dtype,
                                                          record_property):
    """fp16 and bf16 autocast as training runs them (utils.autocast); the difference from the fp32 original has no
    bound and goes into the junit report (tools/gpu_selfcheck.py shows it)."""
    if device.type != 'cuda':
        pytest.skip('a CUDA check (--device cuda): fp16 autocast is a CUDA rule of this project')
    if amp_dtype == 'bfloat16' and not torch.cuda.is_bf16_supported():
        pytest.skip(f'{torch.cuda.get_device_name(device)} has no bf16 support')
    config = parity_config(shared_dir, enable_amp='true', amp_dtype=amp_dtype)
    assert autocast_dtype(config, device, training=True) == getattr(torch, amp_dtype)
    for case in ('single', 'padded'):
        inputs, expected = golden['cases'][case]['inputs'], golden['cases'][case]['outputs']
        with torch.inference_mode(), autocast(config, device, training=True):
            out = model(*golden_samples(inputs, device), inputs['text_queries'])
        for layer, (ours, theirs) in enumerate([(out, expected)] + list(zip(out['aux_outputs'],
                                                                             expected['aux_outputs']))):
            for key in ('pred_masks', 'pred_is_referred'):
                assert torch.isfinite(ours[key]).all(), (case, layer, key)
                record_property(f'{case} layer {layer} {key} max relative error',
                                f'{max_relative_error(ours[key].float(), theirs[key]):.1e}')


def official_checkpoint(model, deterministic_state_dict, manifest):
    """A checkpoint laid out as the original trainer writes it (keys in the manifest's order)."""
    weights = deterministic_state_dict(model.state_dict())
    state_dict = {e['key']: weights[e['key']] for e in manifest['entries']}
    head = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4)
    head(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[50], gamma=0.4)
    return {'epoch': 69, 'total_epochs': 70, 'model_state_dict': state_dict,
            'optimizer_state_dict': optimizer.state_dict(), 'scheduler_state_dict': scheduler.state_dict(),
            'grad_scaler_state_dict': {}, 'best_mAP': 0.461}


@pytest.mark.slow
def test_official_checkpoint_file_loads_with_weights_only(model, deterministic_state_dict, manifest, tmp_path,
                                                          golden, device):
    checkpoint = official_checkpoint(model, deterministic_state_dict, manifest)
    assert isinstance(checkpoint['scheduler_state_dict']['milestones'], collections.Counter)
    path = tmp_path / 'official.pth.tar'
    torch.save(checkpoint, path)
    fresh_weights = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(fresh_weights)
    try:
        loaded = load_model_weights(model, path)
        assert loaded['scheduler_state_dict']['milestones'] == collections.Counter({50: 1})
        inputs, expected = golden['cases']['padded']['inputs'], golden['cases']['padded']['outputs']
        with torch.inference_mode():
            out = model(*golden_samples(inputs, device), inputs['text_queries'])
        assert max_relative_error(out['pred_masks'], expected['pred_masks']) <= 1e-4
    finally:
        model.load_state_dict(deterministic_state_dict(model.state_dict()))


def test_our_checkpoints_carry_the_official_keys(model, manifest):
    assert POSITION_IDS_KEY in model.state_dict()
    assert torch.equal(model.state_dict()[POSITION_IDS_KEY].cpu(), torch.arange(514).unsqueeze(0))


def test_position_ids_may_be_absent_but_must_be_right_when_present(model):
    state_dict = model.state_dict()
    without = {k: v for k, v in state_dict.items() if k != POSITION_IDS_KEY}
    model.load_state_dict(without, strict=True)
    wrong = dict(state_dict, **{POSITION_IDS_KEY: torch.arange(514).flip(0).unsqueeze(0)})
    with pytest.raises(ValueError, match='position_ids'):
        model.load_state_dict(wrong, strict=True)


def test_foreign_checkpoint_lists_missing_and_unexpected_keys(tiny_model, tmp_path):
    state_dict = dict(tiny_model.state_dict())
    state_dict.pop('is_referred_head.weight')
    state_dict['class_embed.weight'] = torch.zeros(3)
    path = tmp_path / 'foreign.pth'
    torch.save(state_dict, path)
    with pytest.raises(KeyError, match=r'missing keys: is_referred_head\.weight.*unexpected keys: class_embed'):
        load_model_weights(tiny_model, path)


def test_truncated_and_missing_checkpoints_name_the_file(tiny_model, tmp_path):
    path = tmp_path / 'truncated.pth'
    save_checkpoint({'model_state_dict': {'a': torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(RuntimeError, match='truncated.pth'):
        load_model_weights(tiny_model, path)
    with pytest.raises(FileNotFoundError, match='nothere.pth'):
        load_model_weights(tiny_model, tmp_path / 'nothere.pth')


def test_unreadable_text_encoder_says_how_to_work_offline(tmp_path):
    with pytest.raises(OSError, match='text_encoder_type') as error:
        build_text_encoder(str(tmp_path / 'no_such_model'), pretrained=False)
    assert 'no_such_model' in str(error.value)


def test_text_encoder_from_local_directory_with_weights(tmp_path):
    """text_encoder_pretrained loads saved weights from a local directory (a small RoBERTa made here)."""
    from transformers import RobertaConfig, RobertaModel
    write_tiny_text_encoder(tmp_path)
    torch.manual_seed(1)
    RobertaModel(RobertaConfig.from_pretrained(tmp_path), add_pooling_layer=False).save_pretrained(tmp_path)
    saved = RobertaModel.from_pretrained(tmp_path, add_pooling_layer=False)
    pretrained, _ = build_text_encoder(str(tmp_path), pretrained=True)
    random_init, _ = build_text_encoder(str(tmp_path), pretrained=False)
    key = 'encoder.layer.0.attention.self.query.weight'
    assert torch.equal(pretrained.state_dict()[key], saved.state_dict()[key])
    assert not torch.equal(random_init.state_dict()[key], saved.state_dict()[key])


def kinetics_checkpoint(backbone4: VideoSwinBackbone):
    """The Kinetics-400 Video Swin-T file layout, made from a 4-stage backbone of ours."""
    state_dict = {}
    for key, value in backbone4.state_dict().items():
        if key.startswith('downsamples.'):
            _, stage, rest = key.split('.', 2)
            key = f'layers.{stage}.downsample.{rest}'
        if key == 'patch_embed.proj.weight':  # two temporal taps that sum to the per-frame kernel
            value = torch.cat([0.25 * value, 0.75 * value], dim=2)
        state_dict[f'backbone.{key}'] = value
    state_dict['backbone.norm.weight'] = torch.ones(768)
    state_dict['backbone.norm.bias'] = torch.zeros(768)
    state_dict['cls_head.fc_cls.weight'] = torch.zeros(400, 768)
    return {'meta': {'epoch': 30}, 'state_dict': state_dict}


def test_kinetics_weights_are_adapted_and_loaded(tmp_path):
    torch.manual_seed(2)
    backbone4 = VideoSwinBackbone(num_stages=4)
    checkpoint = kinetics_checkpoint(backbone4)
    assert checkpoint['state_dict']['backbone.patch_embed.proj.weight'].shape == (96, 3, 2, 4, 4)
    path = tmp_path / 'swin_tiny_patch244_window877_kinetics400_1k.pth'
    torch.save(checkpoint, path)
    backbone = VideoSwinBackbone()
    load_kinetics_weights(backbone, path)
    ours = backbone.state_dict()
    assert set(ours) == set(adapt_kinetics_state_dict(checkpoint['state_dict']))
    assert torch.allclose(ours['patch_embed.proj.weight'], backbone4.state_dict()['patch_embed.proj.weight'])
    assert torch.equal(ours['downsamples.1.reduction.weight'], backbone4.state_dict()['downsamples.1.reduction.weight'])
    assert torch.equal(ours['layers.2.blocks.5.mlp.fc2.weight'], backbone4.state_dict()['layers.2.blocks.5.mlp.fc2.weight'])


def test_missing_kinetics_weights_name_the_path_and_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere.pth.*pretrained_swin_transformer/README.md'):
        load_kinetics_weights(VideoSwinBackbone(), tmp_path / 'nowhere.pth')


def test_fp32_training_step_with_frozen_text_encoder(tmp_path):
    """The original cannot backpropagate in fp32 (its frozen encoder runs under inference_mode)."""
    text_encoder = write_tiny_text_encoder(tmp_path)
    torch.manual_seed(3)
    model = build_network(network_config(text_encoder, num_queries=5)).train()
    samples = NestedTensor(torch.randn(2, 1, 3, 64, 64), torch.zeros(2, 1, 64, 64, dtype=torch.bool))
    out = model(samples, torch.tensor([1]), ['the dog on the left'])
    loss = out['pred_masks'].square().mean() + out['pred_is_referred'].square().mean()
    loss.backward()
    assert model.transformer.txt_proj.fc.weight.grad.abs().sum() > 0
    assert model.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.transformer.text_encoder.parameters())


def test_training_step_on_cpu(tmp_path):
    """Forward, criterion, backward and an optimizer step of a small MTTR on a tiny batch, in fp32."""
    from models import build_model
    config = network_config(write_tiny_text_encoder(tmp_path), swin_embed_dim=32, swin_depths=[2, 2, 2, 2],
                            swin_num_heads=[2, 4, 8, 16], d_model=64, dim_feedforward=128, num_queries=5)
    torch.manual_seed(4)
    model, criterion, _ = build_model(config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    samples = NestedTensor(torch.randn(3, 2, 3, 64, 64), torch.zeros(3, 2, 64, 64, dtype=torch.bool))
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, :32], masks[1, 32:] = True, True
    targets = [[{'masks': masks, 'referred_instance_idx': torch.tensor(1)},
                {'masks': masks[:1], 'referred_instance_idx': torch.tensor(0)}]]
    before = model.spatial_decoder.out_lay.weight.detach().clone()
    losses = criterion(model(samples, torch.tensor([1]), ['the bottom half', 'the top half']), targets)
    assert set(losses) == set(criterion.weight_dict)
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses)
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    assert not torch.equal(before, model.spatial_decoder.out_lay.weight)


def test_shifted_window_attention_equals_the_explicit_softmax_for_several_videos(device):
    """Windows attend in groups of equal shift mask; each must still get its own mask and its own video's order."""
    from models.swin_transformer import WindowAttention3D, compute_shift_mask, shift_regions
    torch.manual_seed(0)
    attention = WindowAttention3D(dim=8, window_size=(2, 2, 2), num_heads=2).eval()
    torch.nn.init.normal_(attention.relative_position_bias_table)
    attention.to(device)
    size, window, shift = (2, 6, 6), (2, 2, 2), (0, 1, 1)
    regions = shift_regions(*size, window, shift, device)  # [9 windows, 8]
    mask = regions.unsqueeze(1) - regions.unsqueeze(2)  # Video Swin's mask
    mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
    videos, windows, n = 2, mask.shape[0], 8
    x = torch.randn(videos * windows, n, 8).to(device)
    q, k, v = attention.qkv(x).reshape(videos * windows, n, 3, 2, 4).permute(2, 0, 3, 1, 4)
    bias = attention.relative_position_bias_table[attention.relative_position_index.reshape(-1)]
    bias = bias.reshape(n, n, 2).permute(2, 0, 1)
    logits = q @ k.transpose(-1, -2) / 2 + bias + mask.repeat(videos, 1, 1)[:, None]
    expected = attention.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(videos * windows, n, 8))
    shift_mask = compute_shift_mask(*size, window, shift, device)
    # inner windows, last column, last row, corner
    assert sorted(len(w) for w in shift_mask.windows) == [1, 2, 2, 4]
    assert torch.allclose(attention(x, shift_mask), expected, atol=1e-5)
    assert not torch.allclose(attention(x, None), expected, atol=1e-3)  # the mask matters in this case


def small_backbone(**options):
    from models.swin_transformer import VideoSwinBackbone
    torch.manual_seed(5)
    return VideoSwinBackbone(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=(2, 4, 4),
                             drop_path_rate=0.5, **options)


def backbone_loss(backbone, video):
    return sum(out.tensors.square().mean() for out in backbone(video))


def test_activation_checkpointing_gives_the_same_gradients_and_keeps_fewer_activations():
    video = NestedTensor(torch.randn(4, 2, 3, 48, 40), torch.zeros(4, 2, 48, 40, dtype=torch.bool))
    gradients, saved = [], []
    for checkpointing in (False, True):
        backbone = small_backbone(activation_checkpointing=checkpointing).train()
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            torch.manual_seed(6)  # the same stochastic-depth draws (drop_path_rate 0.5) for both
            loss = backbone_loss(backbone, video)
        loss.backward()
        gradients.append({name: p.grad for name, p in backbone.named_parameters()})
        saved.append(sum(sizes))
    plain, checkpointed = gradients
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], rtol=1e-5, atol=1e-7), name
    assert saved[1] < saved[0] / 2


def test_forward_without_autograd_equals_forward_with_it():
    """Without autograd the blocks' MLPs run a few frames at a time: the same numbers."""
    backbone = small_backbone().eval()
    video = NestedTensor(torch.randn(5, 2, 3, 48, 40), torch.zeros(5, 2, 48, 40, dtype=torch.bool))
    with torch.inference_mode():
        chunked = backbone(video)
    whole = backbone(video)
    for ours, expected in zip(chunked, whole):
        assert torch.allclose(ours.tensors, expected.tensors, rtol=1e-5, atol=1e-6)


def test_repeated_queries_are_tokenized_once_and_serve_training_after_evaluation(tmp_path):
    text_encoder = write_tiny_text_encoder(tmp_path)
    model = build_network(network_config(text_encoder, num_queries=5, freeze_text_encoder=False)).eval()
    transformer = model.transformer
    calls = []
    tokenizer = transformer.tokenizer
    transformer.tokenizer = lambda texts, **kwargs: calls.append(list(texts)) or tokenizer(texts, **kwargs)
    with torch.inference_mode():
        first, _ = transformer.forward_text(['the dog on the left', 'a cat'], torch.device('cpu'))
        again, _ = transformer.forward_text(['the dog on the left', 'a cat'], torch.device('cpu'))
    assert torch.equal(first, again)
    assert calls == [['the dog on the left', 'a cat']]
    transformer.forward_text(['a cat'], torch.device('cpu'))
    assert len(calls) == 2
    # the tokens cached under inference mode feed a trainable text encoder
    memory, _ = transformer.forward_text(['the dog on the left', 'a cat'], torch.device('cpu'))
    (memory * torch.randn_like(memory)).sum().backward()  # (a plain sum after a LayerNorm has no gradient)
    assert len(calls) == 2
    assert transformer.text_encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
