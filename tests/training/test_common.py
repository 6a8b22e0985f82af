"""What the training scripts share (training/common.py): the precision a run trains in, what a model
ships, and the rule that no command writes over the shipped weights without being told where."""

from __future__ import annotations

import pytest

import training.common as common
from training import calibrate, dual_encoder, reranker, squad_reader


def test_a_gpu_always_trains_in_bf16_and_a_cpu_when_asked_or_when_it_computes_bf16_natively(monkeypatch) -> None:
    import torch

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert all(common.use_bf16(gpu, precision) for precision in ("auto", "fp32", "bf16"))
    assert common.use_bf16(cpu, "bf16") and not common.use_bf16(cpu, "fp32")
    for native in (True, False):
        monkeypatch.setattr(common, "native_bf16", lambda native=native: native)
        assert common.use_bf16(cpu, "auto") is native


def test_what_ships_is_the_weights_under_the_scripts_prefixes() -> None:
    import torch

    model = torch.nn.ModuleDict({"embeddings": torch.nn.Linear(2, 2), "encoder": torch.nn.ModuleList([torch.nn.Linear(2, 2)])})
    model.add_module("head", torch.nn.Linear(2, 1))
    shipped = common.trained_state(model, ("encoder.0.", "head."))
    assert sorted(shipped) == ["encoder.0.bias", "encoder.0.weight", "head.bias", "head.weight"]


@pytest.mark.parametrize(
    "command",
    [
        lambda: squad_reader.parser().parse_args(["train"]),
        lambda: dual_encoder.parser().parse_args(["train"]),
        lambda: reranker.parser().parse_args(["train"]),
        lambda: calibrate.main(["fit"]),
    ],
    ids=["squad_reader train", "dual_encoder train", "reranker train", "calibrate fit"],
)
def test_no_command_writes_weights_without_being_told_where(command, capsys) -> None:
    """The shipped weights (qa/*_weights) are replaced only by naming them: `--out` has no default."""
    with pytest.raises(SystemExit):
        command()
    assert "--out" in capsys.readouterr().err
