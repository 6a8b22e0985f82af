"""What the training scripts share: where the data is, the seed, the device and precision, what a
model ships, the learning-rate schedule, the optimizer step, the progress line, and a checkpoint
that a run killed at any moment resumes from, to the weights an unbroken run would reach."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

#: ../shared/data beside the repository (never committed): SQuAD v1.1 and RealTimeQA, as the folds use them.
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SQUAD_TRAIN = "squad11_train"
RTQA = "realtimeqa_2020_2021"
#: Every script's default seed (the shipped weights were trained with it).
SEED = 13


def calibration_fold(title: str) -> bool:
    """About one SQuAD training article in forty, never trained on: the reader's score calibration is
    fitted there, and the retriever's fusion weights are tuned there."""
    return int(hashlib.md5(title.encode()).hexdigest(), 16) % 40 == 0


def rtqa_held_out(qid: str) -> bool:
    """About one RealTimeQA question in five, which the reader never trains on."""
    return int(hashlib.md5(qid.encode()).hexdigest(), 16) % 5 == 0


# --------------------------------------------------------------------------------------- device


def device_for(choice: str):
    """`--device`: auto (cuda when torch sees one), cpu, cuda."""
    import torch

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def native_bf16() -> bool:
    """Whether the CPU computes in bf16 natively (AVX-512 BF16 or AMX)."""
    try:
        return re.search(r"\b(avx512_bf16|amx_bf16)\b", Path("/proc/cpuinfo").read_text()) is not None
    except OSError:
        return False


def use_bf16(device, precision: str) -> bool:
    """Whether a run autocasts to bf16: always on a GPU (whatever `--precision` says), with
    `--precision bf16`, and with `auto` on a CPU that computes bf16 natively."""
    return device.type == "cuda" or precision == "bf16" or (precision == "auto" and native_bf16())


def trained_state(model, prefixes: tuple[str, ...]) -> dict:
    """What ships: the model's weights under `prefixes` (each script names its own; the rest, the
    token embeddings among them, stays the bundled model's)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}


# --------------------------------------------------------------------------------------- training


def linear_schedule(opt, steps: int):
    """A tenth of the steps warming up, then linear decay to zero."""
    import torch

    warm = max(1, steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))


def optimizer_step(loss, params, opt, sched) -> float:
    """Backward, gradients clipped at norm 1, a step of the optimizer and of the schedule; the loss."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad()
    return float(loss.item())


class Progress:
    """Mean loss, speed and time left every `every` steps, and the training seconds so far (what a
    checkpoint records, so a resumed run reports its whole cost)."""

    def __init__(self, steps: int, every: int, unit: str, trained_s: float = 0.0) -> None:
        self.steps, self.every, self.unit, self.trained_s = steps, every, unit, trained_s
        self._reset()

    def _reset(self) -> None:
        self.t0, self.total, self.count, self.items = time.time(), 0.0, 0, 0

    def update(self, step: int, loss: float, items: int) -> None:
        """Count a finished step (`step` is the number done) that trained on `items` units."""
        self.total, self.count, self.items = self.total + loss, self.count + 1, self.items + items
        if step % self.every and step != self.steps:
            return
        elapsed = time.time() - self.t0
        self.trained_s += elapsed
        eta = (self.steps - step) * elapsed / self.count / 60
        print(
            f"step {step}/{self.steps} loss {self.total / self.count:.3f} {self.items / elapsed:.1f} {self.unit}/s eta {eta:.0f} min",
            flush=True,
        )
        self._reset()


class Checkpoint:
    """The trained weights (those under `ships`, as `trained_state` picks them), optimizer, schedule,
    step, training seconds and the RNG (dropout: a resumed run draws what an unbroken one would),
    written atomically."""

    def __init__(self, path: Path, model, opt, sched, ships: tuple[str, ...]) -> None:
        self.path, self.model, self.opt, self.sched, self.ships = path, model, opt, sched, ships

    def resume(self, device) -> tuple[int, float]:
        """(step, training seconds) to go on from: (0, 0.0) without a checkpoint."""
        import torch

        if not self.path.exists():
            return 0, 0.0
        state = torch.load(self.path, map_location=device, weights_only=False)
        self.model.load_state_dict(state["model"], strict=False)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        print(f"resumed from {self.path} at step {state['step']}", flush=True)
        return state["step"], state["trained_s"]

    def save(self, step: int, trained_s: float) -> None:
        import torch

        tmp = self.path.with_suffix(".tmp")
        state = {"model": trained_state(self.model, self.ships), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}
        torch.save({**state, "step": step, "trained_s": trained_s, "rng": torch.get_rng_state()}, tmp)
        tmp.replace(self.path)
