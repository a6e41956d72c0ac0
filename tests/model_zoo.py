"""Small real models for the model tests, exported by real torch: the seed project's demo MLP, a
ResNet-style CNN, and a GPT-style decoder with every pattern torch writes for one."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnx
import torch
from torch import nn


def demo_mlp() -> nn.Module:
    """The original project's one demo: Linear(40, 8196) -> ReLU -> Linear(8196, 1) -> Sigmoid."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 8196), nn.ReLU(), nn.Linear(8196, 1), nn.Sigmoid()).eval()


class Block(nn.Module):
    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels // stride, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.skip = nn.Conv2d(channels // stride, channels, 1, stride) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


class SmallResNet(nn.Module):
    """Conv + BatchNorm (folded), grouped conv, residual adds, max and global average pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 5, 2, 2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(Block(16, 1), Block(32, 2))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.stem(x))
        return torch.softmax(self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1)), -1)


def small_resnet() -> nn.Module:
    torch.manual_seed(1)
    model = SmallResNet()
    for m in model.modules():  # running statistics that are not the identity, so folding them matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)  # fused QKV, then Split
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape  # Shape / Gather in the graph
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.reshape(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(c // self.heads)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        scores = torch.where(causal, scores, torch.tensor(float("-inf")))  # Where
        y = torch.softmax(scores, -1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class Decoder(nn.Module):
    """A GPT-style decoder: token and position embeddings (Gather), pre-norm blocks, exact GELU (Erf)."""

    def __init__(self, vocab: int = 97, width: int = 32, heads: int = 4, layers: int = 2, context: int = 16) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(2 * layers))
        self.attention = nn.ModuleList(Attention(width, heads) for _ in range(layers))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)) for _ in range(layers)
        )
        self.final = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1])
        x = self.tokens(ids) + self.positions(positions)
        for i, (attention, mlp) in enumerate(zip(self.attention, self.mlps, strict=True)):
            x = x + attention(self.norms[2 * i](x))
            x = x + mlp(self.norms[2 * i + 1](x))
        return self.head(self.final(x))


def decoder() -> nn.Module:
    torch.manual_seed(2)
    return Decoder().eval()


def to_onnx(module: nn.Module, example: torch.Tensor, dynamic: dict[int, str] | None = None) -> onnx.ModelProto:
    """The module as torch exports it (opset 17), batch (and other listed axes) symbolic."""
    buffer = io.BytesIO()
    axes = dynamic or {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter (no onnxscript needed)
        torch.onnx.export(module, (example,), buffer, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": axes, "output": axes}, opset_version=17, dynamo=False)  # fmt: skip
    return onnx.load_model_from_string(buffer.getvalue())


def torch_answer(module: nn.Module, array: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(array)).numpy()
