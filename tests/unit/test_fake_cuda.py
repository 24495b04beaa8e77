"""The trainer's CUDA code paths on a machine without a GPU, with fake CUDA tensors.

Under `FakeTensorMode` a tensor made on "cuda" carries only metadata (shape, dtype, device), every op runs its meta
implementation, and an op given tensors on two devices raises `FakeTensorDeviceMismatchError`, exactly where a GPU run
would die at its first step or first evaluation. Real CPU tensors that enter the mode (the loader's batches) become
fake CPU tensors, so a batch that is not moved to the device fails too. Autocast on "cuda" refuses to start without a
driver; the `fake_cuda` fixture tells it the device exists and supports bf16, and nothing else is patched.

What cannot run on fake tensors, and how it is covered instead:
- NMS: torchvision's `nms` kernel has no fake implementation (its output size depends on the values). Evaluation
  runs everything around it for real (model, decode, softmax, threshold, top-k, the per-image cap into padded
  `Detections`) and NMS is replaced by a stand-in that checks its inputs share one device and keeps every candidate
  in score order.
- Host conversions (`.tolist()`, COCO records, `.item()`) need values; they come after the device part and run on the
  CPU in every other test.
- `Module.to(memory_format=...)` cannot swap fake parameters: the model stays NCHW here, its inputs are channels_last
  as in the trainer (a layout, not a device, question).
- Backward: the autograd engine asks for the CUDA device's primary context, which needs a driver. The stand-in engine
  checks that the loss is a CUDA scalar with a graph behind it and gives every parameter a zero gradient on its own
  device. The optimizer step runs the plain SGD loop: the fused SGD the trainer uses on CUDA (`_fused_sgd_`) has no
  fake implementation and would need the driver. The kernels' backward is tested for values in
  tests/kernels and on a GPU by scripts/gpu/gpu_check.sh.
- DeepSpeed's engine cannot be built on fake tensors (its start-up broadcast needs a real device): `train_step` runs
  with a stand-in that does what DeepSpeed's does for this config (autocast around the module's forward, backward,
  optimizer step).
"""

import contextlib
from dataclasses import asdict
from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

import ssd_ds.postprocess
from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.box_coder import BoxCoder
from ssd_ds.data.coco import CocoDetection
from ssd_ds.data.loaders import DevicePrefetcher, TrainSampler, build_eval_loader, build_train_loader
from ssd_ds.data.transforms import EvalTransform, TrainTransform
from ssd_ds.device_ops import build_device_ops
from ssd_ds.inference import detect_batch
from ssd_ds.loop import Checkpoints, RunState, train_step
from ssd_ds.model import build_model
from ssd_ds.model_config import cpu_small
from ssd_ds.run_config import demo
from ssd_ds.speedups import build_optimizer
from ssd_ds.step import SSDTrainStep

try:
    from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError
except ImportError:  # torch 2.11 raises a RuntimeError that names both devices ("found two different devices")
    FakeTensorDeviceMismatchError = RuntimeError

CUDA = torch.device("cuda", 0)


@contextlib.contextmanager
def fake_cuda():
    """Fake CUDA tensors with CUDA autocast allowed (its `shape_env` gives data-dependent sizes a symbol). Real
    tensors made before entering stay real CPU data until an op meets them."""
    with mock.patch("torch.cuda.amp.common.amp_definitely_not_available", return_value=False), \
            mock.patch("torch.cuda.is_bf16_supported", return_value=True), \
            FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv()) as mode:
        yield mode


def nms_stand_in(boxes, scores, iou_threshold):
    """Keeps every candidate in score order; what it checks is that NMS would get its inputs on one device."""
    if boxes.device != scores.device:
        raise RuntimeError(f"nms inputs on {boxes.device} and {scores.device}")
    return scores.argsort(descending=True)


class StandInEngine:
    """What DeepSpeed's engine does with this config, on any tensors: autocast(dtype) around the module's forward,
    plain backward, then the optimizer step and zeroed gradients."""

    def __init__(self, module: torch.nn.Module, optimizer, dtype: torch.dtype | None):
        self.module, self.optimizer, self.dtype = module, optimizer, dtype

    def __call__(self, *inputs):
        with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype is not None):
            return self.module(*inputs)

    def backward(self, loss):
        assert loss.device.type == "cuda" and loss.dim() == 0 and loss.grad_fn is not None, loss
        for p in self.module.parameters():  # see the module docstring: no autograd engine without a CUDA context
            p.grad = torch.zeros_like(p)

    def step(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def cuda_model(cfg):
    """The model built on the (fake) CUDA device."""
    with torch.device(CUDA):
        return build_model(cfg)


def plain_sgd(model):
    """The trainer's optimizer settings without `fused` (see the module docstring)."""
    optimizer = build_optimizer(model, 0.01, 0.9, 5e-4, CUDA)
    assert optimizer.defaults["fused"], "the trainer fuses SGD on CUDA"
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=False)


def train_batches(dataset, cfg, encode_on_device: bool, n: int = 1):
    """Real CPU batches from the trainer's own loader and transform (made before any fake tensor exists)."""
    train_set = CocoDetection(dataset, "train")
    coder = None if encode_on_device else BoxCoder(default_boxes_ltrb(cfg.anchors))
    train_set.transform = TrainTransform(cfg.input_size, coder, max_boxes=demo().max_boxes)
    loader = build_train_loader(train_set, TrainSampler(len(train_set), seed=0), batch_size=2, workers=0)
    batches = iter(loader)
    return [next(batches) for _ in range(n)]


def eval_images(dataset, cfg):
    val_set = CocoDetection(dataset, "val", transform=EvalTransform(cfg.input_size), skip_to_next=False)
    images, _, _, _ = next(iter(build_eval_loader(val_set, rank=0, world_size=1, batch_size=2, workers=0)))
    return images


def all_tensors(obj):
    """Every tensor inside nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from all_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from all_tensors(v)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
@pytest.mark.parametrize("encode_on_device", [True, False], ids=["encode_on_device", "encode_in_workers"])
def test_training_step_on_cuda(synthetic_dataset, kernels, encode_on_device):
    cfg = cpu_small(num_classes=CocoDetection(synthetic_dataset, "val").num_classes)
    batches = train_batches(synthetic_dataset, cfg, encode_on_device, n=2)
    with fake_cuda():
        ops = build_device_ops(cfg, CUDA, kernels, "on" if encode_on_device else "off")
        assert (ops.encode is not None) == encode_on_device
        model = cuda_model(cfg)
        step = SSDTrainStep(model, ops.loss)
        engine = StandInEngine(step, plain_sgd(model), torch.bfloat16)
        for batch in DevicePrefetcher(batches, CUDA):
            loss, loc, conf = train_step(engine, batch, torch.channels_last, ops.encode)
            assert {loss.device, loc.device, conf.device} == {CUDA} and loss.dtype == torch.float32
        assert all(p.device == CUDA for p in model.state_dict().values())


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_evaluation_on_cuda(synthetic_dataset, kernels):
    cfg = cpu_small(num_classes=CocoDetection(synthetic_dataset, "val").num_classes)
    images = eval_images(synthetic_dataset, cfg)
    with fake_cuda(), mock.patch.object(ssd_ds.postprocess, "nms", nms_stand_in):
        ops = build_device_ops(cfg, CUDA, kernels)
        model = cuda_model(cfg)
        detections = detect_batch(model, images, ops.coder, CUDA, torch.bfloat16, ops.decode_scores,
                                  torch.channels_last)
        assert detections.boxes.shape[0] == len(images)  # padded, batched: no host sync to check
        assert {t.device for t in detections} == {CUDA}


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_evaluation_with_default_boxes_left_on_the_cpu_fails(synthetic_dataset, kernels):
    """The defect this file exists for: the box coder built on the CPU beside a CUDA model. The fake tensors must
    catch it, or the tests above prove nothing."""
    cfg = cpu_small(num_classes=CocoDetection(synthetic_dataset, "val").num_classes)
    images = eval_images(synthetic_dataset, cfg)
    with fake_cuda(), mock.patch.object(ssd_ds.postprocess, "nms", nms_stand_in):
        ops = build_device_ops(cfg, CUDA, kernels)
        cpu_coder = BoxCoder(ops.coder.dboxes_ltrb.to("cpu"))
        with pytest.raises((FakeTensorDeviceMismatchError, RuntimeError), match="device"):
            detect_batch(cuda_model(cfg), images, cpu_coder, CUDA, torch.bfloat16, ops.decode_scores)


def test_checkpoint_of_a_cuda_run_holds_host_state_and_device_weights(synthetic_dataset):
    """What a checkpoint saves besides DeepSpeed's files: the run state, every RNG, the sampler, the config and the
    batch plan, all host data (readable on a machine without the GPU); the module's tensors all on the one training
    device."""
    cfg = cpu_small(num_classes=CocoDetection(synthetic_dataset, "val").num_classes)
    batches = train_batches(synthetic_dataset, cfg, encode_on_device=True)
    sampler = TrainSampler(10, seed=0)
    with fake_cuda():
        ops = build_device_ops(cfg, CUDA, "torch", "on")
        model = cuda_model(cfg)
        engine = StandInEngine(SSDTrainStep(model, ops.loss), plain_sgd(model), None)
        loss, _, _ = train_step(engine, batches[0].to(CUDA), torch.contiguous_format, ops.encode)
        state = RunState(epoch=1, iteration=1, best_map=0.0)
        client = Checkpoints(engine, None, 1, sampler, asdict(demo()), None).client_state(state)
        weights = engine.module.state_dict()
    assert set(client) == {"run_state", "rng", "sampler", "config", "batch"}
    assert client["rng"].keys() >= {"python", "numpy", "torch"}
    assert all(t.device.type == "cpu" for t in all_tensors(client))
    assert {t.device for t in weights.values()} == {CUDA}
    assert weights.keys() == {f"model.{k}" for k in model.state_dict()}
