"""Trains motion-resnet18 on synthetic clips and writes it in the model contract.

    python train.py all        # render, fit, evaluate, export, precision: what `./run` does
    python train.py render     # render the clip caches (resumable, shard by shard)
    python train.py fit        # train from the caches (checkpoints; a stopped run resumes)
    python train.py evaluate   # held-out accuracy, per-class accuracy, confusion matrix PNG
    python train.py export     # TorchScript model.pt and model.toml beside make_model.py
    python train.py precision  # held-out top-1 of model.pt at fp32, bf16 and fp16, into model.toml

Clips come from scenes.py: the clean training set from seeds 0.. and the photographs in
TRAIN_PHOTOS, the real-footage training set (scenes.REAL_FOOTAGE's nuisances) from seeds
100,000.., the clean held-out set from seeds 1,000,000,000.. and HELDOUT_PHOTOS, and one
held-out slice per nuisance (that nuisance in every clip, no other) from seeds
1,000,000,000 + 1,000,000 k... Each clip is rendered only at the 8 frames the contract samples,
and turned into the model input by preprocess.py, the guest's numbers (contract 1.1: bars
cropped). Rendered inputs are cached (float16) under
$MOTION_HOST_CACHE/train, keyed by a digest of the generator, so a changed generator renders
afresh. Training multiplies each cached clip by 16 exact symmetries: time reversal, left-right
and up-down mirrors and the x/y transpose, each with the label it turns the motion into.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
MODEL_DIR = HERE.parent
sys.path.insert(0, str(MODEL_DIR))

import preprocess  # noqa: E402
import scenes  # noqa: E402
from make_model import MotionResNet18  # noqa: E402

CACHE = pathlib.Path(os.environ.get("MOTION_HOST_CACHE", pathlib.Path.home() / ".cache" / "motion-host")) / "train"
SHARD = 500
ROBUST_SEED = 100_000
HELDOUT_SEED = 1_000_000_000
SLICE_SEED_STEP = 1_000_000
LABELS = scenes.LABELS
NUISANCES = scenes.Nuisances.names()


@dataclasses.dataclass(frozen=True)
class Config:
    train_clips: int = 10_000
    heldout_clips: int = 1_600
    steps: int = 3_000
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.05
    polish_steps: int = 1_500
    polish_lr: float = 5e-4
    robust_clips: int = 10_000
    robust_steps: int = 3_000
    robust_lr: float = 1e-3
    robust_polish_steps: int = 3_000
    robust_polish_lr: float = 4e-4
    slice_clips: int = 400
    # A model file whose weights stand in for the two clean cycles (they made it): the shipped
    # 1.1.0 started from 1.0.0's model.pt. Empty: train them.
    base: str = ""
    seed: int = 20261122
    threads: int = 2


def generator_digest() -> str:
    """What the cached inputs depend on: the generator, the preprocessing, torch and numpy."""
    h = hashlib.sha256()
    for name in ("scenes.py", "preprocess.py"):
        h.update((HERE / name).read_bytes())
    h.update(f"{torch.__version__} {np.__version__}".encode())
    return h.hexdigest()[:12]


def clip_input(clip: scenes.Clip) -> np.ndarray:
    """The model input [8, 112, 112] of one clip, rendering only the sampled frames."""
    indices = preprocess.sample_indices(clip.frames)
    distinct = sorted(set(indices))
    frames = preprocess.crop(list(clip.render(distinct)[:, 0].numpy()))
    resized = {i: preprocess.normalise(preprocess.resize(f)) for i, f in zip(distinct, frames)}
    return np.stack([resized[i] for i in indices]).astype(np.float32)


def source(split: str) -> tuple[int, tuple[str, ...], scenes.Recipe]:
    """A split's first seed, photographs and recipe: "train" and "robust" for training,
    "heldout" and "heldout-<nuisance>" for evaluation."""
    if split == "train":
        return 0, scenes.TRAIN_PHOTOS, scenes.RECIPE
    if split == "robust":
        return ROBUST_SEED, scenes.TRAIN_PHOTOS, scenes.Recipe(nuisances=scenes.REAL_FOOTAGE)
    if split == "heldout":
        return HELDOUT_SEED, scenes.HELDOUT_PHOTOS, scenes.RECIPE
    name = split.removeprefix("heldout-")
    first = HELDOUT_SEED + SLICE_SEED_STEP * (NUISANCES.index(name) + 1)
    return first, scenes.HELDOUT_PHOTOS, scenes.Recipe(nuisances=scenes.Nuisances.only(name))


def _render_shard(job: tuple[str, int, int, str]) -> str:
    split, first, count, path = job
    torch.set_num_threads(1)
    base, photos, recipe = source(split)
    inputs = np.empty((count, 8, 112, 112), dtype=np.float16)
    labels = np.empty(count, dtype=np.int64)
    for k in range(count):
        seed = first + k
        # Labels cycle with the seed's offset in its split, so every slice has them all alike.
        label = (seed - base) % len(LABELS)
        inputs[k] = clip_input(scenes.Clip.draw(seed, label, photos, recipe))
        labels[k] = label
    tmp = path + ".tmp"
    torch.save({"inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels), "first_seed": first}, tmp)
    os.replace(tmp, path)
    return path


def shard_paths(split: str, clips: int) -> list[tuple[str, int, int, str]]:
    base = source(split)[0]
    digest = generator_digest()
    return [
        (split, base + first, min(SHARD, clips - first), str(CACHE / f"{split}-{digest}-{first // SHARD:04d}.pt"))
        for first in range(0, clips, SHARD)
    ]


def sizes(cfg: Config) -> dict[str, int]:
    """Every split this configuration uses, with its clips; the clean training set only when
    the clean cycles run."""
    splits = {"heldout": cfg.heldout_clips}
    splits |= {f"heldout-{name}": cfg.slice_clips for name in NUISANCES}
    if cfg.robust_steps or cfg.robust_polish_steps:
        splits["robust"] = cfg.robust_clips
    if not cfg.base:
        splits["train"] = cfg.train_clips
    return splits


def render(cfg: Config, splits: tuple[str, ...] | None = None) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    wanted = sizes(cfg)
    jobs = [j for split in (splits or tuple(wanted)) for j in shard_paths(split, wanted[split])]
    todo = [j for j in jobs if not os.path.exists(j[3])]
    # One thread per worker, for numpy's BLAS too: the workers already fill the cores.
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = "1"
    print(f"render: {len(jobs) - len(todo)} of {len(jobs)} shards cached in {CACHE}", flush=True)
    start = time.time()
    with multiprocessing.get_context("spawn").Pool(cfg.threads) as pool:
        for done, path in enumerate(pool.imap_unordered(_render_shard, todo), 1):
            print(f"render: {done}/{len(todo)} {pathlib.Path(path).name} ({time.time() - start:.0f} s)", flush=True)


def load(split: str, clips: int) -> tuple[torch.Tensor, torch.Tensor]:
    shards = [torch.load(p, weights_only=True) for *_, p in shard_paths(split, clips)]
    return torch.cat([s["inputs"] for s in shards]), torch.cat([s["labels"] for s in shards])


def _swap(*pairs: tuple[str, str]) -> torch.Tensor:
    table = list(range(len(LABELS)))
    for a, b in pairs:
        i, j = LABELS.index(a), LABELS.index(b)
        table[i], table[j] = j, i
    return torch.tensor(table)


# What each symmetry of a clip does to its label.
REVERSE = _swap(
    ("pan_left", "pan_right"),
    ("tilt_up", "tilt_down"),
    ("zoom_in", "zoom_out"),
    ("roll_clockwise", "roll_counterclockwise"),
    ("truck_left", "truck_right"),
    ("pedestal_up", "pedestal_down"),
    ("dolly_in", "dolly_out"),
)
MIRROR_X = _swap(("pan_left", "pan_right"), ("truck_left", "truck_right"), ("roll_clockwise", "roll_counterclockwise"))
MIRROR_Y = _swap(("tilt_up", "tilt_down"), ("pedestal_up", "pedestal_down"), ("roll_clockwise", "roll_counterclockwise"))
# Swapping x and y turns content sliding right (+x) into content sliding down (+y).
TRANSPOSE = _swap(
    ("pan_left", "tilt_up"),
    ("pan_right", "tilt_down"),
    ("truck_left", "pedestal_up"),
    ("truck_right", "pedestal_down"),
    ("roll_clockwise", "roll_counterclockwise"),
)


def symmetrise(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Applies a random one of the 16 symmetries to each clip of a batch [B, 8, H, W]."""
    x, y = x.clone(), y.clone()
    for table, op in (
        (REVERSE, lambda t: t.flip(0)),
        (MIRROR_X, lambda t: t.flip(2)),
        (MIRROR_Y, lambda t: t.flip(1)),
        (TRANSPOSE, lambda t: t.transpose(1, 2)),
    ):
        chosen = torch.rand(len(y), generator=gen) < 0.5
        for i in torch.nonzero(chosen).flatten().tolist():
            x[i] = op(x[i]).clone()
        y = torch.where(chosen, table[y], y)
    return x, y


def checkpoint_path(cfg: Config, phase: int) -> pathlib.Path:
    """Where cycle `phase` keeps its state, keyed by what it depends on: the generator, the
    cycles up to it and the settings they share, so that adding a later cycle keeps it."""
    cycles = [c for c in phases(cfg) if c[0] <= phase]
    own = {"steps", "lr", "polish_steps", "polish_lr", "robust_steps", "robust_lr", "robust_polish_steps", "robust_polish_lr"}
    shared = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in own}
    key = hashlib.sha256(f"{generator_digest()} {cycles} {shared}".encode()).hexdigest()[:12]
    return CACHE / f"checkpoint-{key}-{phase}.pt"


def phases(cfg: Config) -> list[tuple[int, str, int, float]]:
    """(cycle number, training split, steps, peak learning rate) of each learning-rate cycle: the
    main one on clean clips, a shorter, gentler one from its weights, which settles the last
    parallax confusions, then two on real footage's nuisances, the second gentler, as on clean
    clips. With a base model, its weights stand in for the first two."""
    cycles = [(0, "train", cfg.steps, cfg.lr), (1, "train", cfg.polish_steps, cfg.polish_lr)]
    cycles.append((2, "robust", cfg.robust_steps, cfg.robust_lr))
    cycles.append((3, "robust", cfg.robust_polish_steps, cfg.robust_polish_lr))
    return [c for c in cycles if c[2] and not (cfg.base and c[1] == "train")]


def base_weights(cfg: Config) -> dict[str, torch.Tensor]:
    """The weights of the base model file (TorchScript, as export writes it)."""
    return torch.jit.load(cfg.base, map_location="cpu").state_dict()


def fit(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    x_held, y_held = load("heldout", cfg.heldout_clips)
    plan = " then ".join(f"{steps} steps on {split} (peak lr {lr})" for _, split, steps, lr in phases(cfg))
    start = f"the weights of {cfg.base}" if cfg.base else "scratch"
    print(f"fit: from {start}, {len(y_held)} held out, batches of {cfg.batch}: {plan}", flush=True)
    model = MotionResNet18()
    if cfg.base:
        model.load_state_dict(base_weights(cfg))
    model = model.to(memory_format=torch.channels_last)
    minutes = []
    for phase, split, steps, lr in phases(cfg):
        data = load(split, sizes(cfg)[split])
        minutes.append(_cycle(cfg, phase, steps, lr, model, data, (x_held, y_held)) / 60)
    final = {"model": model.state_dict(), "config": dataclasses.asdict(cfg), "minutes": minutes}
    torch.save(final, CACHE / "final.tmp")
    os.replace(CACHE / "final.tmp", CACHE / "final.pt")


def _cycle(cfg: Config, phase: int, steps: int, lr: float, model: torch.nn.Module, train: tuple, held: tuple) -> float:
    """One learning-rate cycle from the model's current weights (resuming from its checkpoint
    if it was stopped); returns the seconds it trained."""
    (x_train, y_train), (x_held, y_held) = train, held
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(cfg.seed + phase)
    step, elapsed = 0, 0.0
    path = checkpoint_path(cfg, phase)
    if path.exists():
        state = torch.load(path, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        gen.set_state(state["generator"])
        step, elapsed = state["step"], state["elapsed"]
        print(f"fit: cycle {phase + 1} resumed at step {step} from {path}", flush=True)
    if step >= steps:
        return elapsed

    def save() -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "schedule": schedule.state_dict(),
                "generator": gen.get_state(),
                "step": step,
                "elapsed": elapsed,
                "config": dataclasses.asdict(cfg),
            },
            tmp,
        )
        os.replace(tmp, path)

    model.train()
    seen_loss, seen_right, seen = 0.0, 0, 0
    mark = time.time()
    while step < steps:
        picks = torch.randint(len(y_train), (cfg.batch,), generator=gen)
        x, y = symmetrise(x_train[picks].float(), y_train[picks], gen)
        logits = model(x.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        step += 1
        seen_loss += loss.item() * len(y)
        seen_right += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if step % 50 == 0 or step == steps:
            now = time.time()
            elapsed += now - mark
            mark = now
            line = (
                f"fit: cycle {phase + 1} step {step}/{steps} loss {seen_loss / seen:.3f} "
                f"train-acc {seen_right / seen:.3f} lr {schedule.get_last_lr()[0]:.2e} {elapsed / 60:.1f} min"
            )
            if step % 500 == 0 or step == steps:
                accuracy = (predict(model, x_held[:400]) == y_held[:400]).float().mean().item()
                model.train()
                line += f" held-out(400) {accuracy:.3f}"
                mark = time.time()
            print(line, flush=True)
            seen_loss, seen_right, seen = 0.0, 0, 0
            save()
    return elapsed


@torch.inference_mode()
def predict(model: torch.nn.Module, inputs: torch.Tensor, batch: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat([model(inputs[i : i + batch].float()).argmax(1) for i in range(0, len(inputs), batch)])


def trained(cfg: Config) -> tuple[torch.nn.Module, dict]:
    state = torch.load(CACHE / "final.pt", weights_only=False)
    if state["config"] != dataclasses.asdict(cfg):
        raise SystemExit(f"{CACHE / 'final.pt'} was trained with another configuration; run fit")
    model = MotionResNet18()
    model.load_state_dict(state["model"])
    return model.eval(), state


def evaluate(cfg: Config) -> dict:
    torch.set_num_threads(cfg.threads)
    model, state = trained(cfg)
    x, y = load("heldout", cfg.heldout_clips)
    guess = predict(model, x)
    n = len(LABELS)
    confusion = torch.zeros(n, n, dtype=torch.int64)
    for truth, g in zip(y.tolist(), guess.tolist()):
        confusion[truth, g] += 1
    per_class = {LABELS[i]: confusion[i, i].item() / max(1, confusion[i].sum().item()) for i in range(n)}
    slices = {}
    for name in NUISANCES:
        xs, ys = load(f"heldout-{name}", cfg.slice_clips)
        right = predict(model, xs) == ys
        worst = min(range(n), key=lambda c: right[ys == c].float().mean().item())
        slices[name] = {
            "top1": right.float().mean().item(),
            "clips": len(ys),
            "worst_class": LABELS[worst],
            "worst_class_top1": right[ys == worst].float().mean().item(),
        }
    report = {
        "top1": (guess == y).float().mean().item(),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "clips": len(y),
        "nuisances": slices,
        "training_minutes": sum(state["minutes"]),
        "cycle_minutes": state["minutes"],
    }
    (CACHE / "evaluation.json").write_text(json.dumps(report, indent=1))
    plot_confusion(confusion, report["top1"], slices, MODEL_DIR / "confusion.png")
    print(f"evaluate: top-1 {report['top1']:.4f} on {len(y)} clean held-out clips", flush=True)
    for label, accuracy in per_class.items():
        print(f"  {label:24s} {accuracy:.3f}", flush=True)
    for name, result in slices.items():
        print(
            f"  {name:24s} {result['top1']:.3f} on {result['clips']} clips "
            f"(weakest: {result['worst_class']} {result['worst_class_top1']:.2f})",
            flush=True,
        )
    return report


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_TABLE = "[evaluation.precision]"


def precision(cfg: Config) -> dict:
    """Held-out top-1 of the exported model.pt, the file the server loads, with its weights and
    input cast to each precision the server offers (`--precision`) the way the server casts them:
    the server refuses a precision with no recorded accuracy here, or one more than 0.5 points
    below fp32's. Written into model.toml's [evaluation.precision] and kept in the cache, keyed
    by the file's sha256, so a later export keeps it."""
    torch.set_num_threads(cfg.threads)
    path = MODEL_DIR / "model.pt"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    render(cfg, ("heldout",))
    x, y = load("heldout", cfg.heldout_clips)
    top1 = {}
    for name, dtype in PRECISIONS.items():
        model = torch.jit.load(str(path)).eval().to(dtype)
        start = time.time()
        with torch.inference_mode():
            guess = torch.cat([model(x[i : i + 64].to(dtype)).float().argmax(1) for i in range(0, len(x), 64)])
        top1[name] = (guess == y).float().mean().item()
        print(f"precision: {name} top-1 {top1[name]:.4f} on {len(y)} held-out clips ({time.time() - start:.0f} s)", flush=True)
    record = {"sha256": digest, "clips": len(y), "top1": top1}
    (CACHE / "precision.json").write_text(json.dumps(record, indent=1))
    write_precision_table(record)
    return record


def write_precision_table(record: dict) -> None:
    """Puts `record` into model.toml as its last table, replacing an earlier one."""
    manifest = MODEL_DIR / "model.toml"
    text = manifest.read_text()
    text = text.split("\n" + PRECISION_TABLE + "\n")[0].rstrip("\n") + "\n"
    rows = "\n".join(f"{name} = {value:.4f}" for name, value in record["top1"].items())
    text += (
        f"\n{PRECISION_TABLE}\n"
        f"# Held-out top-1 of model.pt with weights and input cast to each precision (train.py precision).\n"
        f"{rows}\n"
    )
    manifest.write_text(text)


def recorded_precision(digest: str) -> dict | None:
    """The cached precision evaluation, if it was made of the model file with `digest`."""
    try:
        record = json.loads((CACHE / "precision.json").read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("sha256") == digest else None


def plot_confusion(confusion: torch.Tensor, top1: float, slices: dict, path: pathlib.Path) -> None:
    """The clean held-out confusion matrix, and beside it top-1 on each nuisance's slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(14, 8), dpi=100, gridspec_kw={"width_ratios": [9, 4]})
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            if confusion[i, j]:
                colour = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, str(confusion[i, j].item()), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(LABELS)), LABELS, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"motion-resnet18 on {confusion.sum().item()} clean held-out clips: top-1 {top1:.1%}")
    names = ["clean"] + list(slices)
    values = [top1] + [s["top1"] for s in slices.values()]
    bars.barh(range(len(names)), values, color=["#4c72b0"] + ["#dd8452"] * len(slices))
    for i, value in enumerate(values):
        bars.text(value - 0.01, i, f"{value:.1%}", ha="right", va="center", fontsize=8, color="white")
    bars.set_yticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0.5, 1.0)
    bars.axvline(0.92, color="grey", linestyle=":", linewidth=1)
    bars.set_xlabel("top-1")
    bars.set_title(f"by nuisance ({next(iter(slices.values()))['clips'] if slices else 0} clips each)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("all", "render", "fit", "evaluate", "export", "precision"))
    for field in dataclasses.fields(Config):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args()
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    if args.stage in ("all", "render"):
        render(cfg)
    if args.stage in ("all", "fit"):
        fit(cfg)
    if args.stage in ("all", "evaluate"):
        evaluate(cfg)
    if args.stage in ("all", "export"):
        import export

        export.export(cfg, trained(cfg)[0], json.loads((CACHE / "evaluation.json").read_text()))
    if args.stage in ("all", "precision"):
        precision(cfg)


if __name__ == "__main__":
    main()
