"""One video encoding for many text queries (`MTTR.encode_video`, `decode`, `segment`) against one forward pass per
query, on the golden cases."""
import pytest
import torch
import torch.nn.functional as F

from models.postprocessing import binary_masks_at_input_size
from tests.helpers import max_relative_error
from utils import NestedTensor

# a short and a long query, so the batched texts are padded differently than in a forward of one query
OTHER_QUERIES = ('a dog', 'the tall person on the right side holding a tennis racket in the air')
TOLERANCE = 1e-5  # relative to the tensor's largest absolute value; 1 vs 2 threads alone moves it by 1.1e-6


def golden_inputs(golden, case, device):
    inputs = golden['cases'][case]['inputs']
    return (NestedTensor(inputs['samples'], inputs['mask']).to(device), inputs['valid_indices'].to(device),
            list(inputs['text_queries']))


def layers(out):
    """The final layer's outputs, then the aux layers'."""
    return [{key: layer[key] for key in ('pred_masks', 'pred_is_referred')}
            for layer in [out] + out.get('aux_outputs', [])]


def query_slot(out, slot):
    """Every layer's outputs for batch entry `slot`: [T', 1, ...]."""
    return [{key: value[:, slot:slot + 1] for key, value in layer.items()} for layer in layers(out)]


def assert_close(ours, expected, tolerance=TOLERANCE):
    assert len(ours) == len(expected)
    for layer, (our_layer, expected_layer) in enumerate(zip(ours, expected)):
        for key, value in expected_layer.items():
            assert our_layer[key].shape == value.shape, (layer, key)
            assert max_relative_error(our_layer[key], value) <= tolerance, (layer, key)


@pytest.fixture(scope='module')
def single(model, golden, device):
    """The one-video case: three queries decoded together, and each query's own forward pass."""
    samples, valid_indices, (golden_query,) = golden_inputs(golden, 'single', device)
    queries = [golden_query, *OTHER_QUERIES]
    with torch.inference_mode():
        forwards = [model(samples, valid_indices, [query]) for query in queries]
        shared = model.decode(model.encode_video(samples, valid_indices), queries, torch.tensor([0, 0, 0]))
    return samples, valid_indices, queries, shared, forwards


@pytest.fixture(scope='module')
def padded(model, golden, device):
    """The two-video case, queries on videos [1, 0, 0]. A video is padded to the batch's size, so each query's
    reference is a forward pass on the same batch with that query at its video's slot."""
    samples, valid_indices, golden_queries = golden_inputs(golden, 'padded', device)
    queries = [golden_queries[1], golden_queries[0], OTHER_QUERIES[1]]
    query_videos = torch.tensor([1, 0, 0])
    with torch.inference_mode():
        golden_order = model(samples, valid_indices, golden_queries)
        third_on_video_0 = model(samples, valid_indices, [queries[2], golden_queries[1]])
        shared = model.decode(model.encode_video(samples, valid_indices), queries, query_videos)
    references = [query_slot(golden_order, 1), query_slot(golden_order, 0), query_slot(third_on_video_0, 0)]
    return samples, valid_indices, queries, query_videos, shared, references


@pytest.mark.slow
def test_queries_decoded_together_equal_one_forward_per_query(single, golden):
    _, _, queries, shared, forwards = single
    assert shared['pred_masks'].shape[1] == len(queries) == 3
    for slot, forward in enumerate(forwards):
        assert_close(query_slot(shared, slot), query_slot(forward, 0))
    # the golden query's outputs are still the original's
    expected = golden['cases']['single']['outputs']
    assert_close(query_slot(shared, 0), query_slot(expected, 0), tolerance=1e-4)
    # the queries do lead to different outputs, so a mix-up of queries would show
    assert max_relative_error(shared['pred_masks'][:, 1], shared['pred_masks'][:, 0]) > 1e-3


@pytest.mark.slow
def test_queries_on_several_videos_equal_forward_at_their_videos_slot(padded, golden):
    _, _, _, _, shared, references = padded
    for slot, reference in enumerate(references):
        assert_close(query_slot(shared, slot), reference)
    # the first two queries are the golden case's, on the videos they were written for
    expected = golden['cases']['padded']['outputs']
    assert_close(query_slot(shared, 0), query_slot(expected, 1), tolerance=1e-4)
    assert_close(query_slot(shared, 1), query_slot(expected, 0), tolerance=1e-4)


@pytest.mark.slow
def test_forward_is_decode_of_encode_video(model, golden, device):
    samples, valid_indices, queries = golden_inputs(golden, 'padded', device)
    with torch.inference_mode():
        forward = model(samples, valid_indices, queries)
        decoded = model.decode(model.encode_video(samples, valid_indices), queries)
    assert_close(layers(decoded), layers(forward), tolerance=0)
    assert_close(layers(forward), layers(golden['cases']['padded']['outputs']), tolerance=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('case, query_batches', [('single', (1, 2, None)), ('padded', (2,))])
def test_segment_in_query_batches_equals_decoding_all_at_once(model, case, query_batches, single, padded):
    if case == 'single':  # no query_videos: every query is on the one video
        samples, valid_indices, queries, shared, _ = single
        query_videos = None
    else:
        samples, valid_indices, queries, query_videos, shared, _ = padded
    for query_batch in query_batches:
        result = model.segment(samples, valid_indices, queries, query_videos, query_batch=query_batch)
        assert set(result) == {'pred_masks', 'pred_is_referred'}
        assert all(value.dtype == torch.float32 for value in result.values())
        assert_close([result], layers(shared)[:1])


@pytest.mark.slow
def test_factored_masks_multiply_out_to_the_masks(model, single):
    from models.postprocessing import mask_logits, referred_query_outputs
    samples, valid_indices, queries, shared, _ = single
    factored = model.segment(samples, valid_indices, queries, query_batch=2, factored_masks=True)
    assert set(factored) == {'mask_kernels', 'mask_features', 'pred_is_referred'}
    assert factored['mask_features'].shape[2] == model.instance_kernels_head.layers[-1].out_features  # C = 8
    assert_close([{'pred_masks': mask_logits(factored), 'pred_is_referred': factored['pred_is_referred']}],
                 layers(shared)[:1])
    # one chosen object query per text query: that query's masks
    chosen = torch.tensor([3, 0, 7])
    expected = shared['pred_masks'][:, torch.arange(3), chosen][:, :, None]
    assert torch.allclose(mask_logits(factored, chosen), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
    best = referred_query_outputs(factored, 1, num_frames=2)
    probabilities = shared['pred_is_referred'][:2, 1].softmax(-1)[..., 0].mean(0)
    assert best['pred_masks'].shape == (2, 1, 1, *shared['pred_masks'].shape[-2:])
    assert torch.allclose(best['pred_masks'][:, 0, 0], shared['pred_masks'][:2, 1, probabilities.argmax()],
                          rtol=1e-5, atol=1e-5 * shared['pred_masks'].abs().max())


@pytest.mark.slow
def test_queries_on_one_video_see_its_features_expanded_not_copied(model, single):
    samples, valid_indices, queries, _, _ = single
    seen = []
    hook = model.transformer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        model.segment(samples, valid_indices, queries)
    finally:
        hook.remove()
    vid_embeds, = seen
    assert vid_embeds.shape[1] == len(queries)
    assert vid_embeds.stride(1) == 0


@pytest.mark.slow
def test_binary_masks_equal_those_of_one_forward_per_query(model, padded):
    samples, valid_indices, queries, query_videos, _, references = padded
    segmented = model.segment(samples, valid_indices, queries, query_videos, query_batch=2)
    padded_size = samples.tensors.shape[-2:]
    for slot, reference in enumerate(references):
        expected_logits = reference[0]['pred_masks'][:, 0]  # [T', N, h, w]
        ours = binary_masks_at_input_size(segmented['pred_masks'][:, slot], padded_size)
        expected = binary_masks_at_input_size(expected_logits, padded_size)
        upsampled = F.interpolate(expected_logits, size=list(padded_size), mode='bilinear', align_corners=False)
        decided = upsampled.abs() > 1e-4
        assert decided.float().mean() > 0.999  # the exemption does not hide the comparison
        assert torch.equal(ours[decided], expected[decided]), slot
        assert expected[decided].any() and not expected[decided].all()


@pytest.mark.slow
def test_query_videos_must_fit_the_queries_and_videos(model, padded):
    samples, valid_indices, queries, _, _, _ = padded
    with torch.inference_mode():
        video_features = model.encode_video(samples, valid_indices)
    assert video_features.num_videos == 2
    with pytest.raises(ValueError, match='query_videos must index the 2 encoded videos'):
        model.decode(video_features, queries, torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match='one video index per text query'):
        model.decode(video_features, queries, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='3 text queries for 2 videos'):
        model.segment(samples, valid_indices, queries)
    with pytest.raises(ValueError, match='query_batch'):
        model.segment(samples, valid_indices, queries, torch.tensor([0, 1, 0]), query_batch=0)
