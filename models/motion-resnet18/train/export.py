"""Writes the trained network as the server loads it: TorchScript `model.pt` and its manifest
`model.toml` (version, sha256, how it was made, the data recipe and the held-out metrics)."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib

import torch

import scenes
from train import (
    CACHE,
    HELDOUT_SEED,
    LABELS,
    MODEL_DIR,
    NUISANCES,
    ROBUST_SEED,
    SLICE_SEED_STEP,
    Config,
    generator_digest,
    phases,
    recorded_precision,
    write_precision_table,
)

NAME = "motion-resnet18"
VERSION = "1.1.0"
# The model contract's preprocessing this model was trained with: 1.1 crops letterbox and
# pillarbox bars before resizing.
PREPROCESSING = "1.1"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def export(cfg: Config, model: torch.nn.Module, report: dict) -> None:
    path = MODEL_DIR / "model.pt"
    scripted = torch.jit.script(model.eval())
    scripted.save(str(path))
    loaded = torch.jit.load(str(path)).eval()
    with torch.inference_mode():
        for batch in (1, 4):
            probe = torch.randn(batch, 8, 112, 112, generator=torch.Generator().manual_seed(batch))
            out = loaded(probe)
            assert out.shape == (batch, len(LABELS)), out.shape
            assert torch.allclose(out, model(probe), atol=1e-4), "the TorchScript file disagrees with the network"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    params = sum(p.numel() for p in model.parameters())

    recipe = {k: v for k, v in dataclasses.asdict(scenes.RECIPE).items() if k != "nuisances"}
    real_footage = "\n".join(f"{k} = {_toml_value(v)}" for k, v in dataclasses.asdict(scenes.REAL_FOOTAGE).items())
    slices = report["nuisances"]
    nuisance_rows = "\n".join(f"{name} = {slices[name]['top1']:.4f}" for name in NUISANCES)
    weakest = "\n".join(
        f'{name} = ["{slices[name]["worst_class"]}", {slices[name]["worst_class_top1"]:.4f}]' for name in NUISANCES
    )
    cycles = phases(cfg)
    if cfg.base:
        base_digest = hashlib.sha256(pathlib.Path(cfg.base).read_bytes()).hexdigest()
        start = f"the weights of motion-resnet18 1.0.0 (model.pt, sha256 {base_digest}), made by its two clean cycles"
    else:
        start = "scratch"
    per_class = "\n".join(f"{label} = {report['per_class'][label]:.4f}" for label in LABELS)
    confusion = "\n".join(f"  {_toml_value(row)}, # {label}" for row, label in zip(report["confusion"], LABELS))
    recipe_lines = "\n".join(f"{key} = {_toml_value(value)}" for key, value in recipe.items())
    (MODEL_DIR / "model.toml").write_text(
        f'''# The default model of motion-host; written by train/export.py (see train/README.md).
name = "{NAME}"
version = "{VERSION}"
preprocessing = "{PREPROCESSING}"
format = "torchscript"
file = "model.pt"
sha256 = "{digest}"
description = "ResNet-18 camera-motion classifier: 8 luma frames of 112x112 in, 16 motion logits out"

[[inputs]]
name = "input"
shape = [-1, 8, 112, 112]
dtype = "FP32"

[[outputs]]
name = "logits"
shape = [-1, {len(LABELS)}]
dtype = "FP32"

[provenance]
made_by = "models/motion-resnet18/train/run"
torch = "{torch.__version__.split('+')[0]}"
parameters = {params}
architecture = "models/motion-resnet18/make_model.py: torchvision's resnet18 layout, 8-channel stem, 16-way head"
weights = "trained on synthetic layered-scene clips (train/scenes.py): two cycles on clean clips, then two on clips with real footage's nuisances"
started_from = "{start}"
training_clips = {cfg.train_clips}
training_seeds = "0..{cfg.train_clips - 1}, label = seed mod 16 (the clean cycles)"
real_footage_clips = {cfg.robust_clips}
real_footage_seeds = "{ROBUST_SEED}..{ROBUST_SEED + cfg.robust_clips - 1}, label = seed mod 16 (the real-footage cycles)"
training_photos = {_toml_value(scenes.TRAIN_PHOTOS)}
symmetries = "time reversal, left-right and up-down mirrors, x/y transpose, each with its label map (16 per clip)"
cycles = {_toml_value([split for _, split, _, _ in cycles])}
steps = {_toml_value([steps for _, _, steps, _ in cycles])}
peak_learning_rates = {_toml_value([lr for _, _, _, lr in cycles])}
batch = {cfg.batch}
optimiser = "AdamW, one-cycle learning rate per cycle (each cycle starts from the last one's weights), weight decay {cfg.weight_decay}, label smoothing {cfg.label_smoothing}"
seed = {cfg.seed}
# Minutes of the cycles this run trained (with a base model, the real-footage cycles only; the
# clean cycles took 75.0 when 1.0.0 was made).
training_minutes = {report['training_minutes']:.1f}
cycle_minutes = {_toml_value([round(m, 1) for m in report['cycle_minutes']])}
machine = "2 CPU cores (x86-64), torch CPU"
generator_digest = "{generator_digest()}"

[provenance.recipe]
{recipe_lines}

[provenance.real_footage]
# The chance of each nuisance in a clip of the real-footage cycle (scenes.REAL_FOOTAGE).
{real_footage}

[evaluation]
dataset = "clean held-out synthetic clips (every nuisance off): seeds {HELDOUT_SEED}..{HELDOUT_SEED + cfg.heldout_clips - 1}, photographs no training clip used"
heldout_photos = {_toml_value(scenes.HELDOUT_PHOTOS)}
clips = {report['clips']}
top1 = {report['top1']:.4f}
confusion_png = "confusion.png"
# Rows are the true label, columns the predicted one, in label order.
confusion = [
{confusion}
]

[evaluation.per_class]
{per_class}

[evaluation.nuisances]
# Top-1 on a held-out slice per nuisance: {cfg.slice_clips} clips each ({cfg.slice_clips // len(LABELS)} per label),
# that nuisance in every clip and no other, seeds {HELDOUT_SEED} + {SLICE_SEED_STEP} k.., the
# held-out photographs.
{nuisance_rows}

[evaluation.nuisances.weakest_class]
{weakest}
'''
    )
    if (record := recorded_precision(digest)) is not None:
        write_precision_table(record)
    print(f"export: wrote {path} ({path.stat().st_size} bytes, sha256 {digest}) and model.toml", flush=True)
    print(f"export: cached inputs and checkpoints stay in {CACHE}", flush=True)
