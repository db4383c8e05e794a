"""The architecture of motion-host's default model, motion-resnet18.

A ResNet-18 whose first convolution takes 8 channels (8 luma frames of 112x112, channel i is
frame i in time order) and whose head gives 16 logits, one per camera motion. The labels are
not part of the model: the guest names them.

The shipped weights (model.pt, model.toml) are trained by train/ (see train/README.md). Run as
a script, this file writes the same network with untrained weights drawn from a fixed seed
(reproducible bit for bit with the same torch version) to the path given: a network of the
contract's shape and cost but no skill, for plumbing and load experiments.

    python make_model.py untrained.pt
"""

import hashlib
import pathlib
import sys
import time

import torch
from torch import nn

SEED = 20261121
FRAMES, SIZE, CLASSES = 8, 112, 16


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = nn.Identity()
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class MotionResNet18(nn.Module):
    """torchvision's resnet18 layout with an 8-channel stem and a 16-way head."""

    def __init__(self, in_channels: int = FRAMES, classes: int = CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers = []
        inplanes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python make_model.py OUT.pt   (the shipped model.pt comes from train/run)")
    torch.manual_seed(SEED)
    model = MotionResNet18().eval()
    path = pathlib.Path(sys.argv[1])
    torch.jit.script(model).save(str(path))

    # Check what was written against the contract.
    loaded = torch.jit.load(str(path)).eval()
    with torch.inference_mode():
        for batch in (1, 4):
            out = loaded(torch.zeros(batch, FRAMES, SIZE, SIZE))
            assert out.shape == (batch, CLASSES), out.shape
        start = time.perf_counter()
        loaded(torch.zeros(1, FRAMES, SIZE, SIZE))
        forward_ms = (time.perf_counter() - start) * 1000
    params = sum(p.numel() for p in model.parameters())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"wrote {path} ({path.stat().st_size} bytes, {params} parameters, sha256 {digest}, forward {forward_ms:.1f} ms)")


if __name__ == "__main__":
    main()
