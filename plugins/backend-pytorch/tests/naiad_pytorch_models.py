"""Small real PyTorch models written into a test's folder, with their Triton configs.

Shared by this plugin's tests, ``tests/test_pytorch_e2e.py`` and ``bench/framework_overhead.py``
(which load this file by path). Importing it imports torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch.export import Dim

MLP_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 32
input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
dynamic_batching { }
"""

CONV_CONFIG = """
backend: "pytorch"
max_batch_size: 32
input [ { name: "image", data_type: TYPE_FP32, dims: [ 3, 16, 16 ], format: FORMAT_NCHW } ]
output [ { name: "logits__0", data_type: TYPE_FP32, dims: [ 10 ] },
         { name: "features__1", data_type: TYPE_FP32, dims: [ 8, 8, 8 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
dynamic_batching { }
"""


class MLP(torch.nn.Module):
    """FP32 [batch, 16] -> 32 relu -> [batch, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(16, 32)
        self.out = torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


class ConvNet(torch.nn.Module):
    """FP32 image [batch, 3, 16, 16] -> (logits [batch, 10], features [batch, 8, 8, 8])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.head = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.pool(torch.relu(self.conv(image)))
        return self.head(features.flatten(1)), features


class TwoInputs(torch.nn.Module):
    """x, y FP32 [batch, 4] -> dict(sum=x + 2y, diff=x - y)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": x + 2 * y, "diff": x - y}


def mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP().eval()


def conv_net(seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet().eval()


def quiet_jit(fn: Any, *args: Any) -> Any:
    """Call torch.jit.trace / script without their deprecation warning (torch >= 2.10)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return fn(*args)


def save_torchscript(
    module: torch.nn.Module,
    example: Any,
    version_dir: Path,
    filename: str = "model.pt",
    script: bool = False,
) -> Path:
    """Trace (or script) ``module`` and save it as ``version_dir/filename``."""
    version_dir.mkdir(parents=True, exist_ok=True)
    compiled = (
        quiet_jit(torch.jit.script, module)
        if script
        else quiet_jit(torch.jit.trace, module, example)
    )
    compiled.save(str(version_dir / filename))
    return version_dir


def save_exported(
    module: torch.nn.Module,
    example: tuple[Any, ...],
    version_dir: Path,
    batch: bool = True,
    filename: str = "model.pt2",
) -> Path:
    """``torch.export`` ``module`` (first dimension of every input dynamic when ``batch``)."""
    version_dir.mkdir(parents=True, exist_ok=True)
    dims = tuple({0: Dim("batch", min=1, max=1024)} for _ in example) if batch else None
    program = torch.export.export(module, example, dynamic_shapes=dims)
    torch.export.save(program, str(version_dir / filename))
    return version_dir


def write_model(repo: Path, name: str, config: str, save: Any) -> Path:
    """``repo/name/config.pbtxt`` (when ``config``) and version 1 written by ``save(dir)``."""
    (repo / name).mkdir(parents=True, exist_ok=True)
    if config:
        (repo / name / "config.pbtxt").write_text(config)
    save(repo / name / "1")
    return repo / name


def write_repository(repo: Path) -> Path:
    """The models the end-to-end test and the benchmark serve: ``mlp`` and ``conv`` (TorchScript,
    full configs), ``mlp_export`` (torch.export, no config: auto-completed)."""
    write_model(repo, "mlp", MLP_CONFIG, lambda d: save_torchscript(mlp(), torch.randn(2, 16), d))
    write_model(
        repo,
        "conv",
        CONV_CONFIG,
        lambda d: save_torchscript(conv_net(), torch.randn(2, 3, 16, 16), d),
    )
    write_model(repo, "mlp_export", "", lambda d: save_exported(mlp(), (torch.randn(2, 16),), d))
    return repo
