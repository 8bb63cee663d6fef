"""The checks to run on the first machine with a GPU: what only CUDA exercises, in a few minutes, no code to write.

    python tools/gpu_selfcheck.py [--json report.json]
        [--text-encoder ../shared/parity/roberta-base] [--parity-dir ../shared/parity] [--steps STEP ...]

Every test and benchmark of this repository runs on the CPU. On CUDA the code takes other branches: the window
attention runs PyTorch's SDPA kernels instead of the CPU autograd Function, the Swin MLPs are not chunked, fp16
autocast comes with gradient scaling, processes talk over NCCL, the data loader pins memory, torch.compile emits
Triton kernels. Each step below checks one of these; a failure is reported (exception type, message, the end of
the traceback) and the other steps still run. Exit code 0 only when no check failed; 1 otherwise; 2 without CUDA.

Steps (expected time on one current data-centre GPU, A100/H100 class, with the paper's model):

  parity     ~15 s  fp32 with TF32 off: the golden forward cases of the original within 1e-4 relative; matcher,
                    losses and both post-processors on the golden cases as the CPU tests check them
  autocast   ~5 s   the same forward under fp16 and under bf16 autocast (the trainer's rule, utils.autocast with
                    training=True): outputs finite, largest relative difference from the original reported
  train      ~40 s  trainer.train_one_epoch, 5 steps at T=8, 320x427, B=1 with enable_amp (fp16 + GradScaler)
                    and with bf16, each with and without backbone activation checkpointing: losses finite, the
                    scale finite, optimizer steps taken, every trainable weight changed
  attention  ~3 s   models.attention.window_attention's backward (q, k, v and the relative-position bias, with and
                    without a shift pattern, 392 tokens as a 8x7x7 window) against an fp64 reference
  compile    ~150 s torch.compile of the network (in a child process, time limit --compile-timeout): it compiles
                    and its outputs match eager within 1e-4 relative (TF32 off)
  main       ~40 s  main.py -rm train, one epoch on a generated synthetic A2D-layout set with -ng 1, fp16 AMP and
                    2 loader workers (pinned memory), run in a process holding an NCCL process group of world size
                    1 (main.py starts none for one process, so this is how the collectives run on NCCL); then
                    main.py -rm eval of its checkpoint: exit codes 0 and the same metrics
  benchmark  ~155 s tools/benchmark.py --device cuda, cases eval, train, ytvos in fp32, fp16 and bf16, and the
                    shared encoding (cases per_query and shared: 4 expressions of a 36-frame video) in fp32;
                    median time and peak memory

Expected total on one GPU: about 7 minutes (the estimates above plus ~10 s of start-up). The time is mostly
fixed costs: building the paper's network and its 125M-parameter text encoder on the CPU (~3-4 s each time, 4
times in `train`, once more in the compile child), process start-up with CUDA initialisation (~10 s for each of
the 2 main.py runs and each of the 11 benchmark processes, one per case and precision) and inductor's
compilation, the least certain estimate (dynamo alone traced configs/synthetic.yaml's small network in 41 s on
this repository's 2-core test machine: 14 graphs, 10 graph breaks); the GPU work itself (a 320x427 training step
should take 0.2-0.4 s) is a small part. The summary prints each step's estimate beside its measured time.

`--device cpu` is for testing this script's plumbing on the CPU (tests/test_gpu_selfcheck.py): steps that cannot
run there are reported as skipped with the reason (fp16 autocast is a CUDA-only rule of this project). `--small`
uses configs/synthetic.yaml's model sizes and 64x64 frames for the training and compile steps (the parity and
autocast steps always use the paper's network: the golden outputs were computed with it).
"""
import argparse
import contextlib
import io
import json
import math
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PARITY_DIR = REPO.parent / 'shared' / 'parity'
EXIT_FAILED, EXIT_NO_CUDA = 1, 2
IN_PROCESS_GROUP = '--run-main-in-process-group'  # internal: argv[1:] = [this, backend, *main.py arguments]
TRAIN_QUERY = 'a man in black pulling up'
SMALL_MODEL_QUERIES = ['the red circle', 'the big blue square moving left']
TRAIN_CLIP, SMALL_TRAIN_CLIP = (8, 320, 427), (8, 64, 64)  # frames, height, width of the training step's video
PRECISIONS = ('fp32', 'fp16', 'bf16')
BENCHMARK_CASES = ('eval', 'train', 'ytvos', 'per_query', 'shared')  # the last two: the shared encoding's gain
FP32_ONLY_CASES = ('per_query', 'shared')  # (the gain does not depend on the precision; time is short)


class Skip(Exception):
    """The check cannot run on this device or setup; the message says why."""


class CheckFailed(Exception):
    """The check ran and found a problem."""


def require(condition, message):
    if not condition:
        raise CheckFailed(message)


def error_record(error: BaseException) -> dict:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    return {'type': type(error).__name__, 'message': str(error)[:4000],
            'traceback_tail': ''.join(lines)[-3000:]}


def first_line(text, width=110):
    line = str(text).strip().splitlines()[0] if str(text).strip() else ''
    return line if len(line) <= width else line[:width - 3] + '...'


class StepReport:
    """The checks of one step. Each runs in `with report.check(name) as entry:`; the body may put values into
    `entry` and a one-line `entry['summary']`. A failure is recorded and does not stop the step's other checks."""

    def __init__(self):
        self.checks = []

    @contextlib.contextmanager
    def check(self, name):
        entry = {'name': name}
        self.checks.append(entry)
        start = time.perf_counter()
        try:
            yield entry
            entry['status'] = 'passed'
        except Skip as reason:
            entry.update(status='skipped', reason=str(reason))
        except Exception as error:  # noqa: BLE001 (every failure is reported, none stops the others)
            entry.update(status='failed', error=error_record(error))
        finally:
            entry['seconds'] = round(time.perf_counter() - start, 2)


@dataclass(frozen=True)
class Step:
    run: Callable
    gpu_estimate_s: int
    title: str


# ---------------------------------------------------------------------------------------------------------------
# shared pieces: configs, models, golden data


class Run:
    """What the steps share: the options, the device, a temporary directory and the (lazily built) paper network
    with the deterministic weights of the golden data."""

    def __init__(self, args):
        import torch
        self.args = args
        self.device = torch.device(args.device)
        self.parity_dir = Path(args.parity_dir)
        self.workdir = Path(tempfile.mkdtemp(prefix='gpu_selfcheck_', dir=args.tmp_root))
        self._golden = None
        self._parity_network = None
        self._small_text_encoder = None

    def close(self):
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def on_cuda(self):
        return self.device.type == 'cuda'

    def golden(self):
        import torch
        if self._golden is None:
            path = self.parity_dir / 'golden.pt'
            if not path.is_file():
                raise FileNotFoundError(f'{path} not found: --parity-dir must point at the parity data '
                                        '(../shared/parity beside the checkout)')
            self._golden = torch.load(path, weights_only=True)
        return self._golden

    def paper_config(self, text_encoder, **values):
        """configs/a2d_sentences.yaml (the paper's network, as the golden data were made) without pretrained weights."""
        from config import load_config
        running_mode = values.pop('running_mode', 'eval')
        overrides = [f'text_encoder_type={text_encoder}', 'text_encoder_pretrained=false',
                     'backbone_pretrained=false'] + [f'{k}={_yaml(v)}' for k, v in values.items()]
        return load_config(REPO / 'configs' / 'a2d_sentences.yaml', overrides, running_mode=running_mode,
                           device=str(self.device))

    def small_config(self, **values):
        """configs/synthetic.yaml's sizes, with a small text encoder written for it (datasets/synthetic.py)."""
        from config import load_config
        if self._small_text_encoder is None:
            from datasets.synthetic import write_text_encoder
            self._small_text_encoder = write_text_encoder(self.workdir / 'small_text_encoder')
        overrides = [f'text_encoder_type={self._small_text_encoder}'] + [f'{k}={_yaml(v)}' for k, v in values.items()]
        return load_config(REPO / 'configs' / 'synthetic.yaml', overrides, running_mode='train',
                           device=str(self.device))

    def parity_network(self, keep=True):
        """The paper's network with the golden data's weights, in eval mode on the device. `keep=False` hands it
        over (e.g. to be compiled in place) instead of keeping it for later steps."""
        import torch
        from models import build_network
        network = self._parity_network
        if network is None:
            torch.manual_seed(0)
            network = build_network(self.paper_config(self.parity_dir / 'roberta-base'))
            network.load_state_dict(deterministic_weights(self.parity_dir, network.state_dict()), strict=True)
            network = network.to(self.device).eval()
        self._parity_network = network if keep else None
        return network

    def golden_forward(self, network, case, text_queries=None):
        """The network's outputs on a golden forward case (other texts: `text_queries`), on the CPU in float32."""
        import torch
        from utils import NestedTensor
        inputs = self.golden()['cases'][case]['inputs']
        samples = NestedTensor(inputs['samples'], inputs['mask']).to(self.device)
        with torch.inference_mode():
            outputs = network(samples, inputs['valid_indices'].to(self.device),
                              text_queries or inputs['text_queries'])
        return to_cpu_float(outputs)


def _yaml(value):
    return json.dumps(value) if isinstance(value, (list, tuple)) else str(value).lower() if isinstance(value, bool) \
        else value


def deterministic_weights(parity_dir, reference_state_dict):
    """The parity data's weight rule (`weights.py` beside golden.pt)."""
    sys.path.insert(0, str(parity_dir))
    try:
        from weights import deterministic_state_dict
    finally:
        sys.path.pop(0)
    return deterministic_state_dict(reference_state_dict)


def to_cpu_float(outputs):
    if isinstance(outputs, dict):
        return {k: to_cpu_float(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return [to_cpu_float(v) for v in outputs]
    return outputs.detach().float().cpu() if hasattr(outputs, 'detach') else outputs


def output_pairs(ours, expected):
    """(name, our tensor, expected tensor) for the final layer's and every aux layer's masks and reference logits."""
    layers = [('', ours, expected)] + [(f'aux_{i}.', a, b) for i, (a, b) in
                                       enumerate(zip(ours.get('aux_outputs', []), expected['aux_outputs']))]
    if len(ours.get('aux_outputs', [])) != len(expected['aux_outputs']):
        raise CheckFailed(f'{len(ours.get("aux_outputs", []))} aux outputs, expected {len(expected["aux_outputs"])}')
    return [(prefix + key, a[key], b[key]) for prefix, a, b in layers for key in ('pred_masks', 'pred_is_referred')]


def max_relative_error(ours, expected):
    """max |ours - expected| / max |expected| (the parity tests' measure)."""
    return ((ours.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


@contextlib.contextmanager
def tf32_off():
    """fp32 matrix products and convolutions in full precision (cuDNN convolutions default to TF32)."""
    import torch
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, 'fp32_precision'):  # torch >= 2.9; mixing it with allow_tf32 raises
        before = matmul.fp32_precision, conv.fp32_precision
        matmul.fp32_precision = conv.fp32_precision = 'ieee'
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = before
    else:
        before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def with_amp(config, dtype_name):
    import dataclasses
    return dataclasses.replace(config, enable_amp=True, amp_dtype=dtype_name)


def amp_dtype_or_skip(run, config, dtype_name):
    """The autocast dtype the project's rule (utils.autocast_dtype) gives a training run with `dtype_name`."""
    import torch
    from utils import autocast_dtype
    dtype = autocast_dtype(with_amp(config, dtype_name), run.device, training=True)
    if dtype is None:
        raise Skip(f'utils.autocast_dtype gives no {dtype_name} autocast on {run.device.type} (fp16 is a CUDA rule; '
                   'CPU runs are fp32)')
    if dtype == torch.bfloat16 and run.on_cuda and not torch.cuda.is_bf16_supported():
        raise Skip(f'{torch.cuda.get_device_name(run.device)} has no bf16 support')
    return dtype


# ---------------------------------------------------------------------------------------------------------------
# step 1: fp32 parity


def step_parity(run: Run, report: StepReport):
    golden = run.golden()
    with tf32_off():
        for case, data in golden['cases'].items():
            with report.check(f'forward {case}') as entry:
                outputs = run.golden_forward(run.parity_network(), case)
                errors = {}
                for name, ours, expected in output_pairs(outputs, data['outputs']):
                    require(ours.shape == expected.shape, f'{name}: shape {tuple(ours.shape)}, expected '
                                                          f'{tuple(expected.shape)}')
                    errors[name] = max_relative_error(ours, expected)
                entry['max_relative_error'] = errors
                worst = max(errors, key=errors.get)
                entry['summary'] = f'largest relative error {errors[worst]:.1e} ({worst})'
                require(errors[worst] <= run.args.tolerance,
                        f'{worst}: relative error {errors[worst]:.2e} > {run.args.tolerance:g}')
        for dataset, case in golden['criterion'].items():
            with report.check(f'matcher + criterion {dataset}') as entry:
                entry['summary'] = check_criterion(run, case, golden['cases'][case['case']]['outputs'], entry)
    with report.check('post-processing a2d') as entry:
        entry['summary'] = check_a2d_postprocess(run, golden['postprocess']['a2d'], golden)
    with report.check('post-processing ytvos') as entry:
        entry['summary'] = check_ytvos_postprocess(run, golden['postprocess']['ytvos'], golden)


def check_criterion(run, case, golden_outputs, entry):
    """Matched indices exactly, cost matrices within 1e-5, losses and their weighted sum within 1e-5 relative
    (tests/test_matcher.py, tests/test_criterion.py), computed on the device."""
    import torch
    from config import load_config
    from models import criterion as criterion_module
    from trainer import to_device
    criterion = criterion_module.build(load_config(REPO / 'configs' / 'a2d_sentences.yaml')).to(run.device)
    outputs, targets = to_device(golden_outputs, run.device), to_device(case['targets'], run.device)
    require(criterion.weight_dict == case['weight_dict'], f'weight_dict {criterion.weight_dict}')
    for layer, expected_indices in case['matcher_indices'].items():
        layer_outputs = outputs if layer == 'final' else outputs['aux_outputs'][int(layer[-1])]
        indices = criterion.matcher(layer_outputs, targets)
        for video, ((queries, objects), (expected_queries, expected_objects)) in enumerate(zip(indices,
                                                                                             expected_indices)):
            require(torch.equal(queries.cpu(), expected_queries) and torch.equal(objects.cpu(), expected_objects),
                    f'{layer} video {video}: matched {queries.tolist()}->{objects.tolist()}, expected '
                    f'{expected_queries.tolist()}->{expected_objects.tolist()}')
        for cost, expected_cost in zip(criterion.matcher.cost_matrices(layer_outputs, targets),
                                       case['matcher_cost_matrices'][layer]):
            torch.testing.assert_close(cost.cpu(), expected_cost, rtol=1e-5, atol=1e-5)
    losses = criterion(outputs, targets)
    require(set(losses) == set(case['losses']), f'loss terms {sorted(losses)}, expected {sorted(case["losses"])}')
    errors = {name: abs(losses[name].item() - expected.item()) / abs(expected.item())
              for name, expected in case['losses'].items()}
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses).item()
    errors['total'] = abs(total - case['total_loss'].item()) / abs(case['total_loss'].item())
    entry['relative_error'] = errors
    worst = max(errors, key=errors.get)
    require(errors[worst] <= 1e-5, f'{worst}: relative error {errors[worst]:.2e} > 1e-5')
    return f'indices exact, losses within {errors[worst]:.1e} ({worst})'


def logits_at_output_pixels(mask_logits, padded_size, resized_size, original_size):
    """[C, h, w] logits -> [C, 1, H0, W0]: the upsampled logit that decided each output pixel."""
    import torch.nn.functional as F
    logits = F.interpolate(mask_logits[None].float(), size=[int(s) for s in padded_size], mode='bilinear',
                           align_corners=False)[0]
    logits = logits[:, :int(resized_size[0]), :int(resized_size[1])].unsqueeze(1)
    return F.interpolate(logits, size=[int(s) for s in original_size], mode='nearest')


def masks_match(masks, expected, logits, what):
    """Identical binary masks, except up to 0.1% of the pixels where the logit lies within 1e-4 of the threshold
    (as tests/test_postprocessing.py): there a last-bit difference in the upsampling may flip the decision."""
    require(tuple(masks.shape) == tuple(expected.shape), f'{what}: shape {tuple(masks.shape)}, expected '
                                                         f'{tuple(expected.shape)}')
    differ = masks.bool() != expected.bool()
    require(differ.float().mean().item() <= 1e-3 and bool((logits[differ].abs() < 1e-4).all()),
            f'{what}: {int(differ.sum())} pixels differ, not all at the threshold')
    return int(differ.sum())


def check_a2d_postprocess(run, case, golden):
    import numpy as np
    import pycocotools.mask as mask_util
    import torch
    from models.postprocessing import A2DSentencesPostProcess
    outputs = {k: v.flatten(0, 1) for k, v in golden['cases'][case['case']]['outputs'].items() if torch.is_tensor(v)}
    predictions = A2DSentencesPostProcess()({k: v.to(run.device) for k, v in outputs.items()},
                                            case['resized_padded_sample_size'], case['resized_sample_sizes'],
                                            case['orig_sample_sizes'])
    require(len(predictions) == len(case['predictions']), f'{len(predictions)} frames')
    flipped = 0
    for frame, (prediction, expected) in enumerate(zip(predictions, case['predictions'])):
        torch.testing.assert_close(prediction['scores'].cpu(), expected['scores'], rtol=1e-5, atol=1e-5)
        logits = logits_at_output_pixels(outputs['pred_masks'][frame], case['resized_padded_sample_size'],
                                         case['resized_sample_sizes'][frame], case['orig_sample_sizes'][frame])
        flipped += masks_match(prediction['masks'].cpu(), expected['masks'], logits, f'frame {frame} masks')
        require(len(prediction['rle_masks']) == len(expected['rle_masks']), f'frame {frame}: number of RLEs')
        for query, (rle, expected_rle) in enumerate(zip(prediction['rle_masks'], expected['rle_masks'])):
            decoded = mask_util.decode(_rle_bytes(rle))
            require(np.array_equal(decoded, prediction['masks'][query, 0].cpu().numpy()),
                    f'frame {frame} query {query}: RLE differs from the mask')
            masks_match(torch.from_numpy(decoded), torch.from_numpy(mask_util.decode(_rle_bytes(expected_rle))),
                        logits[query, 0], f'frame {frame} query {query} RLE')
    return f'scores within 1e-5, masks and RLEs identical ({flipped} pixels at the threshold differ)'


def _rle_bytes(rle):
    counts = rle['counts']
    return {'size': rle['size'], 'counts': counts.encode() if isinstance(counts, str) else counts}


def check_ytvos_postprocess(run, case, golden):
    import torch
    from models.postprocessing import ReferYoutubeVOSPostProcess
    outputs = golden['cases'][case['case']]['outputs']
    device_outputs = {k: outputs[k].to(run.device) for k in ('pred_masks', 'pred_is_referred')}
    predictions = ReferYoutubeVOSPostProcess()(device_outputs, case['videos_metadata'],
                                               case['samples_shape_with_padding'])
    require(len(predictions) == len(case['predictions']), f'{len(predictions)} videos')
    flipped = 0
    for b, (prediction, expected) in enumerate(zip(predictions, case['predictions'])):
        require({k: v for k, v in prediction.items() if k != 'pred_masks'} ==
                {k: v for k, v in expected.items() if k != 'pred_masks'}, f'video {b}: metadata differs')
        require(prediction['pred_masks'].dtype == torch.uint8, f'video {b}: masks {prediction["pred_masks"].dtype}')
        query = outputs['pred_is_referred'][:, b].softmax(-1)[..., 0].mean(0).argmax()
        logits = logits_at_output_pixels(outputs['pred_masks'][:, b, query], case['samples_shape_with_padding'],
                                         case['videos_metadata'][b]['resized_frame_size'],
                                         case['videos_metadata'][b]['original_frame_size'])
        flipped += masks_match(prediction['pred_masks'].cpu(), expected['pred_masks'], logits, f'video {b} masks')
    return f'trajectory and masks identical ({flipped} pixels at the threshold differ)'


# ---------------------------------------------------------------------------------------------------------------
# step 2: the forward under autocast


def step_autocast(run: Run, report: StepReport):
    import torch
    from utils import NestedTensor, autocast
    golden = run.golden()
    for dtype_name in ('float16', 'bfloat16'):
        with report.check(dtype_name) as entry:
            config = run.paper_config(run.parity_dir / 'roberta-base')
            amp_dtype_or_skip(run, config, dtype_name)
            network = run.parity_network()
            errors = {}
            for case, data in golden['cases'].items():
                inputs = data['inputs']
                samples = NestedTensor(inputs['samples'], inputs['mask']).to(run.device)
                # the trainer's autocast: fp16 is the training precision on CUDA (evaluation stays fp32 there)
                with torch.inference_mode(), autocast(with_amp(config, dtype_name), run.device, training=True):
                    outputs = network(samples, inputs['valid_indices'].to(run.device), inputs['text_queries'])
                outputs = to_cpu_float(outputs)
                for name, ours, expected in output_pairs(outputs, data['outputs']):
                    require(bool(torch.isfinite(ours).all()), f'{case} {name}: non-finite values under {dtype_name}')
                    errors[f'{case}.{name}'] = max_relative_error(ours, expected)
            entry['max_relative_error'] = errors  # reported, no bound
            entry['summary'] = 'finite; largest relative difference ' + ', '.join(
                f'{key} {max(v for k, v in errors.items() if k.endswith(key)):.1e}'
                for key in ('pred_masks', 'pred_is_referred'))


# ---------------------------------------------------------------------------------------------------------------
# step 3: training steps under AMP


def step_train(run: Run, report: StepReport):
    for checkpointing in (False, True):
        for dtype_name in ('float16', 'bfloat16'):
            name = dtype_name + (' + checkpointing' if checkpointing else '')
            with report.check(name) as entry:
                entry['summary'] = train_check(run, dtype_name, checkpointing, entry)


def train_check(run, dtype_name, checkpointing, entry):
    """A few iterations of trainer.train_one_epoch (the trainer's autocast, GradScaler, clipping and AdamW)."""
    import torch
    import trainer
    from models import build_model
    from utils import NestedTensor, autocast_dtype
    memory_before = torch.cuda.memory_allocated(run.device) if run.on_cuda else 0
    values = dict(backbone_activation_checkpointing=checkpointing, running_mode='train')
    if run.args.small:
        config = run.small_config(**values)
        frames, height, width = SMALL_TRAIN_CLIP
    else:
        config = run.paper_config(run.args.text_encoder, **values)
        frames, height, width = TRAIN_CLIP
    config = with_amp(config, dtype_name)
    amp_dtype_or_skip(run, config, dtype_name)
    torch.manual_seed(0)
    model, criterion, _ = build_model(config)
    model.to(run.device)
    criterion.to(run.device)
    optimizer = trainer.build_optimizer(model, config)
    scaler = torch.amp.GradScaler(run.device.type,
                                  enabled=autocast_dtype(config, run.device, training=True) == torch.float16)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    generator = torch.Generator().manual_seed(1)
    samples = NestedTensor(torch.randn(frames, 1, 3, height, width, generator=generator),
                           torch.zeros(frames, 1, height, width, dtype=torch.bool))
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, height // 4:height // 2, width // 4:width // 2] = True
    masks[1, height // 2:, width // 2:] = True
    centre = frames // 2
    targets = [[None] for _ in range(frames)]  # one video; A2D-style: only the centre frame is annotated
    targets[centre] = [{'masks': masks, 'referred_instance_idx': torch.tensor(0)}]
    batch = {'samples': samples, 'targets': targets, 'valid_indices': torch.tensor([centre]),
             'text_queries': [TRAIN_QUERY]}

    if run.on_cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    losses, scales, taken, step_times = [], [], 0, []
    for iteration in range(run.args.train_steps):
        scale_before = scaler.get_scale() if scaler.is_enabled() else 1.0
        start = time.perf_counter()
        progress = trainer.train_one_epoch(model, criterion, [batch], optimizer, scaler, run.device, iteration,
                                           config, trainer.StopRequest())
        if run.on_cuda:
            torch.cuda.synchronize(run.device)
        step_times.append(time.perf_counter() - start)
        losses.append(progress['loss_sums']['loss'])
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scales.append(scale)
        taken += scale >= scale_before  # GradScaler halves the scale when it skips a step (inf/NaN gradients)
    entry.update(losses=losses, scales=scales if scaler.is_enabled() else None, optimizer_steps_taken=taken,
                 seconds_per_step=step_times)
    if run.on_cuda:  # this configuration's own: model, optimizer state, activations
        entry['peak_memory_gib'] = (torch.cuda.max_memory_allocated(run.device) - memory_before) / 2 ** 30
    require(all(math.isfinite(loss) for loss in losses), f'non-finite losses {losses}')
    require(all(math.isfinite(s) and s > 0 for s in scales), f'gradient scale not finite and positive: {scales}')
    require(taken > 0, f'GradScaler skipped all {len(losses)} steps (scales {scales})')
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p.detach(), trainable[n])]
    entry['unchanged_weights'] = unchanged
    require(not unchanged, f'{len(unchanged)} of {len(trainable)} trainable tensors unchanged, e.g. {unchanged[:5]}')
    memory = f', peak {entry["peak_memory_gib"]:.2f} GiB' if run.on_cuda else ''
    scale_text = f', scale {scales[-1]:g}' if scaler.is_enabled() else ''
    return (f'loss {losses[0]:.3f} -> {losses[-1]:.3f}, {taken}/{len(losses)} steps taken{scale_text}, '
            f'{min(step_times):.2f} s/step{memory}')


# ---------------------------------------------------------------------------------------------------------------
# step 4: the window attention's backward


def step_attention(run: Run, report: StepReport):
    for shifted in (False, True):
        with report.check('fp32' + (' shifted' if shifted else '')) as entry:
            entry['summary'] = attention_check(run, shifted, None, entry)
    for dtype_name in ('float16', 'bfloat16'):
        with report.check(f'{dtype_name} autocast') as entry:
            entry['summary'] = attention_check(run, True, dtype_name, entry)


def attention_check(run, shifted, dtype_name, entry):
    """window_attention on the device against the explicit formula in float64 on the CPU: output and the
    gradients of q, k, v and the additive relative-position bias (the one input that is a parameter)."""
    import torch
    from models.attention import window_attention
    windows, heads, tokens, head_dim = 3, 3, 8 * 7 * 7, 32  # Swin-T's first stage: 8x7x7 windows, 3 heads of 32
    generator = torch.Generator().manual_seed(2)
    q, k, v, grad_out = (torch.randn(windows, heads, tokens, head_dim, generator=generator, dtype=torch.float64)
                         for _ in range(4))
    bias = torch.randn(1, heads, tokens, tokens, generator=generator, dtype=torch.float64)
    pattern = None
    if shifted:  # two regions of tokens that must not attend to each other, as Swin's shift mask
        region = torch.arange(tokens) % 5 < 2
        pattern = torch.zeros(tokens, tokens, dtype=torch.float64).masked_fill(region[:, None] != region[None], -100.0)

    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    logits = leaves[0] @ leaves[1].transpose(-2, -1) * head_dim ** -0.5 + leaves[3]
    expected = (logits + pattern if shifted else logits).softmax(-1) @ leaves[2]
    expected.backward(grad_out)
    reference = [expected.detach()] + [t.grad for t in leaves]

    dtype = amp_dtype_or_skip(run, run.paper_config(run.parity_dir / 'roberta-base'), dtype_name) \
        if dtype_name else None
    inputs = [t.to(run.device, torch.float32).requires_grad_() for t in (q, k, v, bias)]
    device_pattern = pattern.to(run.device, torch.float32) if shifted else None
    context = torch.autocast(run.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with tf32_off(), context:
        # under autocast q, k, v come from the qkv Linear in the autocast dtype; the bias is an fp32 parameter
        q_in, k_in, v_in = (t.to(dtype) for t in inputs[:3]) if dtype else inputs[:3]
        out = window_attention(q_in, k_in, v_in, inputs[3], shift_pattern=device_pattern)
    out.backward(grad_out.to(run.device, out.dtype))
    names = ('output', 'grad_q', 'grad_k', 'grad_v', 'grad_bias')
    results = [out.detach()] + [t.grad for t in inputs]
    for name, result in zip(names, results):
        require(result is not None, f'{name}: no gradient')
        require(bool(torch.isfinite(result).all()), f'{name}: non-finite values')
    errors = {name: max_relative_error(result.cpu(), ref) for name, result, ref in zip(names, results, reference)}
    entry.update(kernel=type(out.grad_fn).__name__, max_relative_error=errors)
    worst = max(errors, key=errors.get)
    if dtype is None:
        require(errors[worst] <= run.args.tolerance,
                f'{worst}: relative error {errors[worst]:.2e} > {run.args.tolerance:g}')
    return f'{entry["kernel"]}: largest relative error {errors[worst]:.1e} ({worst})' + \
        ('' if dtype is None else ', reported only')


# ---------------------------------------------------------------------------------------------------------------
# step 5: torch.compile


def step_compile(run: Run, report: StepReport):
    import torch
    import torch._dynamo
    with report.check(f'torch.compile ({run.args.compile_backend})') as entry:
        texts = None
        if run.args.small:
            torch.manual_seed(0)
            from models import build_network
            network = build_network(run.small_config()).to(run.device).eval()
            texts = SMALL_MODEL_QUERIES  # its text encoder knows the synthetic expressions' words only
        else:
            network = run.parity_network(keep=False)  # compiled in place, as the trainer does: not for later steps
        case = 'padded'  # two videos, padding: the mask paths too
        with tf32_off():
            eager = run.golden_forward(network, case, texts)
            start = time.perf_counter()
            run.golden_forward(network, case, texts)  # timed after a warm-up, as the compiled call below
            eager_s = time.perf_counter() - start
            network.compile(backend=run.args.compile_backend)
            start = time.perf_counter()
            compiled = run.golden_forward(network, case, texts)
            compile_s = time.perf_counter() - start
            start = time.perf_counter()
            run.golden_forward(network, case, texts)
            compiled_s = time.perf_counter() - start
        errors = {name: max_relative_error(ours, expected)
                  for name, ours, expected in output_pairs(compiled, eager)}
        worst = max(errors, key=errors.get)
        entry.update(case=case, max_relative_error=errors, first_call_s=compile_s, eager_s=eager_s,
                     compiled_s=compiled_s, dynamo=dynamo_statistics())
        entry['summary'] = (f'first call (compiling) {compile_s:.1f} s, then {compiled_s:.3f} s vs eager '
                            f'{eager_s:.3f} s; largest relative difference {errors[worst]:.1e} ({worst})')
        require(errors[worst] <= run.args.tolerance,
                f'{worst}: compiled differs from eager by {errors[worst]:.2e} > {run.args.tolerance:g}')
        if torch._dynamo.config.disable:
            raise Skip('torch.compile is disabled in this process (TORCH_COMPILE_DISABLE): eager was compared '
                       'with eager')


def dynamo_statistics():
    """Graphs compiled and graph breaks by reason (torch._dynamo's counters; empty if they moved)."""
    try:
        from torch._dynamo.utils import counters
        return {'unique_graphs': counters['stats']['unique_graphs'],
                'graph_breaks': {first_line(reason, 150): n for reason, n in counters['graph_break'].items()}}
    except (ImportError, KeyError, AttributeError):
        return {}


def step_compile_isolated(run: Run, report: StepReport):
    """The compile step in a child process, so that a hang or a crash in the compiler stays a reported failure."""
    if run.args.in_child:
        return step_compile(run, report)
    out = run.workdir / 'compile.json'
    command = [sys.executable, str(Path(__file__).resolve()), '--in-child', '--steps', 'compile', '--json', str(out),
               '--tmp-root', str(run.workdir), *forwarded_options(run.args)]  # (removed with ours if it is killed)
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=run.args.compile_timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f'the compile step did not finish within --compile-timeout {run.args.compile_timeout} s')
    if not out.is_file():
        raise CheckFailed(f'the child process exited with {done.returncode} without a report: '
                          f'{done.stderr[-2000:]}')
    (child_step,) = json.loads(out.read_text())['steps']
    report.checks.extend(child_step['checks'])
    if child_step.get('warnings'):
        report.checks[-1]['warnings'] = child_step['warnings']
    if 'error' in child_step:
        raise CheckFailed(f'{child_step["error"]["type"]}: {child_step["error"]["message"]}')


def forwarded_options(args):
    options = ['--device', args.device, '--parity-dir', str(args.parity_dir), '--text-encoder',
               str(args.text_encoder), '--tolerance', repr(args.tolerance), '--compile-backend', args.compile_backend]
    return options + (['--small'] if args.small else [])


# ---------------------------------------------------------------------------------------------------------------
# step 6: main.py, train and evaluate


def step_main(run: Run, report: StepReport):
    from datasets.synthetic import SyntheticSpec, write_synthetic_dataset
    root = run.workdir / 'main'
    with report.check('write synthetic dataset') as entry:
        spec = SyntheticSpec(seed=0, num_train_videos=2, num_test_videos=2)
        write_synthetic_dataset(root / 'data', spec, progress=False)
        entry['summary'] = f'{spec.num_train_videos} training and {spec.num_test_videos} test videos'
    settings = [f'dataset_path={root / "data"}', f'cache_dir={root / "cache"}', 'epochs=1']
    if run.on_cuda:
        device_flags = ['-gids', str(run.device.index)] if run.device.index is not None else ['-ng', '1']
        backend = 'nccl'
        settings += ['enable_amp=true', 'amp_dtype=float16', 'num_workers=2']  # users' CUDA setting; pinned memory
    else:
        device_flags, backend = ['--cpu', '-ng', '1'], 'gloo'
    flags = ['-c', 'configs/synthetic.yaml', *device_flags] + [f for s in settings for f in ('--set', s)]
    train_dir, eval_dir = root / 'train', root / 'eval'
    checkpoint = train_dir / 'checkpoints' / 'last.pth.tar'

    with report.check(f'train ({backend}, world size 1)') as entry:
        command = [sys.executable, str(Path(__file__).resolve()), IN_PROCESS_GROUP, backend,
                   '-rm', 'train', '--output_dir', str(train_dir), *flags]
        entry['command'] = ' '.join(command)
        entry['summary'] = run_main(command, entry)
        require(checkpoint.is_file(), f'no checkpoint at {checkpoint}')
    with report.check('eval of its checkpoint') as entry:
        if not checkpoint.is_file():
            raise Skip('training wrote no checkpoint')
        command = [sys.executable, 'main.py', '-rm', 'eval', '-ckpt', str(checkpoint), '--output_dir', str(eval_dir),
                   *flags]
        entry['command'] = ' '.join(command)
        summary = run_main(command, entry)
        trained, evaluated = (read_metrics(d / 'metrics_epoch_0.json') for d in (train_dir, eval_dir))
        differences = {k: abs(trained[k] - evaluated[k]) for k in trained if k in evaluated}
        entry['metric_differences'] = differences
        require(differences, f'no common metrics in {train_dir} and {eval_dir}')
        worst = max(differences, key=differences.get)
        # the same weights evaluated in fp32 by another process: only GPU non-determinism may move a pixel
        require(differences[worst] <= 1e-2, f'{worst}: {evaluated[worst]} against {trained[worst]} after training')
        entry['summary'] = f'{summary}; metrics as after training (largest difference {differences[worst]:.1e})'


def run_main(command, entry):
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    entry.update(exit_code=done.returncode, output_tail=(done.stdout + done.stderr)[-3000:])
    last_line = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''
    require(done.returncode == 0, f'exit code {done.returncode}: {last_line}')
    return f'exit 0 in {time.perf_counter() - start:.0f} s'


def read_metrics(path):
    require(path.is_file(), f'{path} was not written')
    metrics = json.loads(path.read_text())
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def main_in_process_group(backend, main_argv):
    """main.main(main_argv) in a process that holds a process group of world size 1: main.py starts no group for
    one process, so this is how the trainer's collectives (loss reduction, broadcasts, gathers) run on NCCL."""
    import torch.distributed as dist
    sys.path.insert(0, str(REPO))
    import main as mttr_main
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        return mttr_main.main(main_argv)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------
# step 7: timings


def precision_flags(run, precision):
    """tools/benchmark.py flags for a precision; Skip when the benchmark cannot select it on this device."""
    if precision == 'fp32':
        return []
    if precision == 'fp16' and not run.on_cuda:
        raise Skip('fp16 autocast is a CUDA path of this project')
    return ['--amp', '--amp-dtype', 'float16' if precision == 'fp16' else 'bfloat16']


def step_benchmark(run: Run, report: StepReport):
    cases = run.args.bench_cases or list(BENCHMARK_CASES)
    with report.check('cases') as entry:
        entry['summary'] = f'timing {", ".join(cases)}'
    for case in cases:
        for precision in PRECISIONS:
            with report.check(f'{case} {precision}') as entry:
                if precision not in run.args.bench_precisions:
                    raise Skip('not selected (--bench-precisions)')
                if case in FP32_ONLY_CASES and precision != 'fp32':
                    raise Skip('the shared-encoding cases are timed in fp32')
                flags = precision_flags(run, precision)
                out = run.workdir / f'benchmark_{case}_{precision}.json'
                command = [sys.executable, 'tools/benchmark.py', '--device', run.args.device, '--cases', case,
                           '--repeats', str(run.args.repeats), '--text-encoder', str(run.args.text_encoder),
                           '--json', str(out), *flags]
                entry['command'] = ' '.join(command)
                done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
                if done.returncode != 0 or not out.is_file():
                    entry['output_tail'] = (done.stdout + done.stderr)[-3000:]
                    raise CheckFailed(f'tools/benchmark.py exited with {done.returncode}')
                (result,) = json.loads(out.read_text())
                entry.update(median_s=result['median_s'], peak_memory_gib=result['peak_memory_gib'],
                             times_s=result['times_s'])
                entry['summary'] = f'{result["median_s"]:.3f} s, {result["peak_memory_gib"]:.2f} GiB'


# ---------------------------------------------------------------------------------------------------------------
# the driver

STEPS = {
    'parity': Step(step_parity, 15, 'fp32 parity with the original (TF32 off)'),
    'autocast': Step(step_autocast, 5, 'forward under fp16 / bf16 autocast'),
    'train': Step(step_train, 40, 'training steps with AMP, with and without checkpointing'),
    'attention': Step(step_attention, 3, 'window attention backward against fp64'),
    'compile': Step(step_compile_isolated, 150, 'torch.compile matches eager'),
    'main': Step(step_main, 40, 'main.py train + eval, one process with a process group'),
    'benchmark': Step(step_benchmark, 155, 'tools/benchmark.py timings and peak memory'),
}
STARTUP_ESTIMATE_S = 10


def run_step(run, name):
    step = STEPS[name]
    report = StepReport()
    output, caught = io.StringIO(), []
    start = time.perf_counter()
    record = {'name': name, 'title': step.title, 'gpu_estimate_s': step.gpu_estimate_s}
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(output), \
            contextlib.redirect_stderr(output):
        warnings.simplefilter('always')
        try:
            step.run(run, report)
        except Exception as error:  # noqa: BLE001 (a failure outside any check fails the step, not the run)
            record['error'] = error_record(error)
    record['seconds'] = round(time.perf_counter() - start, 2)
    record['checks'] = report.checks
    statuses = {check['status'] for check in report.checks}
    record['status'] = 'failed' if 'error' in record or 'failed' in statuses else \
        'skipped' if statuses <= {'skipped'} else 'passed'
    messages = list(dict.fromkeys(f'{w.category.__name__}: {first_line(w.message, 200)}' for w in caught))
    if messages:
        record['warnings'] = messages[:10]
    if record['status'] == 'failed' and output.getvalue():
        record['output_tail'] = output.getvalue()[-3000:]
    return record


def check_line(check):
    if check['status'] == 'passed':
        detail = check.get('summary', '')
    elif check['status'] == 'skipped':
        detail = check['reason']
    else:
        detail = f'{check["error"]["type"]}: {check["error"]["message"]}'
    return f'    {check["status"]:<7} {check["name"]:<28} {first_line(detail, 88)}'


def summary(report):
    lines = [f'gpu_selfcheck on {report["device"]} ({report["device_name"]}), torch {report["torch"]}, '
             f'{report["total_seconds"]:.0f} s',
             f'{"step":<10} {"status":<8} {"time s":>7} {"GPU est.":>9}  what']
    for step in report['steps']:
        lines.append(f'{step["name"]:<10} {step["status"]:<8} {step["seconds"]:>7.1f} '
                     f'{step["gpu_estimate_s"]:>8d}s  {step["title"]}')
        if 'error' in step:
            lines.append(f'    error   {first_line(step["error"]["type"] + ": " + step["error"]["message"], 100)}')
        lines += [check_line(check) for check in step['checks']]
    counts = {s: sum(step['status'] == s for step in report['steps']) for s in ('passed', 'failed', 'skipped')}
    lines.append(f'{counts["passed"]} passed, {counts["failed"]} failed, {counts["skipped"]} skipped; expected on one '
                 f'GPU: {report["gpu_estimate_s"] / 60:.1f} min; exit code {report["exit_code"]}')
    return '\n'.join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--text-encoder', type=Path, default=DEFAULT_PARITY_DIR / 'roberta-base',
                        help='RoBERTa config + tokenizer directory for the training step and the benchmark '
                             '(default: ../shared/parity/roberta-base beside the checkout; the golden cases always '
                             'use PARITY_DIR/roberta-base, which they were made with)')
    parser.add_argument('--parity-dir', type=Path, default=DEFAULT_PARITY_DIR,
                        help='golden data of the original (default: ../shared/parity beside the checkout)')
    parser.add_argument('--steps', nargs='+', choices=list(STEPS), default=list(STEPS),
                        help='run only these steps (always in the order above)')
    parser.add_argument('--json', type=Path, help='write the full report here')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='relative tolerance of the fp32 comparisons: parity forward, attention, compile')
    parser.add_argument('--train-steps', type=int, default=5, help='optimizer steps per training configuration')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per benchmark case (after a warm-up)')
    parser.add_argument('--bench-cases', nargs='+', help='benchmark cases (default: eval train ytvos per_query shared)')
    parser.add_argument('--bench-precisions', nargs='+', choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument('--compile-backend', default='inductor', help='torch.compile backend (the trainer: inductor)')
    parser.add_argument('--compile-timeout', type=int, default=420, help='seconds before the compile step fails')
    parser.add_argument('--device', default='cuda',
                        help='cuda or cuda:N; "cpu" tests this script\'s plumbing only (tests/test_gpu_selfcheck.py)')
    parser.add_argument('--small', action='store_true',
                        help="plumbing tests: configs/synthetic.yaml's model sizes for the train and compile steps")
    parser.add_argument('--in-child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--tmp-root', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device != 'cpu' and not args.device.startswith('cuda'):
        parser.error(f'--device {args.device}: expected cuda, cuda:N or cpu')
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [IN_PROCESS_GROUP]:
        return main_in_process_group(argv[1], argv[2:])
    args = parse_args(argv)
    with warnings.catch_warnings():  # a machine without a driver may warn here: the one line below says it all
        warnings.simplefilter('ignore')
        import torch
        has_cuda = torch.cuda.is_available()
    if args.device.startswith('cuda') and not has_cuda:
        print('gpu_selfcheck: no CUDA device (torch.cuda.is_available() is False); run it on a machine with a GPU '
              '(--device cpu only tests this script)', file=sys.stderr)
        return EXIT_NO_CUDA
    sys.path.insert(0, str(REPO))
    run = Run(args)
    started = time.perf_counter()
    steps = []
    try:
        for name in (n for n in STEPS if n in args.steps):
            if not args.in_child:
                print(f'gpu_selfcheck: {name} ...', file=sys.stderr, flush=True)
            steps.append(run_step(run, name))
            if not args.in_child:
                print(f'gpu_selfcheck: {name} {steps[-1]["status"]} ({steps[-1]["seconds"]:.1f} s)', file=sys.stderr,
                      flush=True)
    finally:
        run.close()
    failed = any(step['status'] == 'failed' for step in steps)
    report = {
        'device': args.device,
        'device_name': torch.cuda.get_device_name(run.device) if run.on_cuda else platform.processor() or 'CPU',
        'torch': torch.__version__, 'cuda': torch.version.cuda, 'python': platform.python_version(),
        'options': {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        'total_seconds': round(time.perf_counter() - started, 1),
        'gpu_estimate_s': STARTUP_ESTIMATE_S + sum(STEPS[step['name']].gpu_estimate_s for step in steps),
        'exit_code': EXIT_FAILED if failed else 0,
        'steps': steps,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    if not args.in_child:
        print(summary(report))
    return report['exit_code']


if __name__ == '__main__':
    sys.exit(main())
