"""python -m fastgan train: end to end on a tiny configuration, its outputs and its errors."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fastgan import train
from fastgan.__main__ import main as cli_main

pytest.importorskip("sklearn", reason="the digits data set ships with scikit-learn")
pytest.importorskip("matplotlib", reason="train writes its pictures with matplotlib")

TINY = ["--steps", "4", "--batch-size", "8", "--n-critic", "2", "--g-width", "4", "--d-width", "4",
        "--nz", "8", "--threads", "1", "--no-progress"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", "--dataset", "digits", "--out", str(out), "--seed", "7",
                     "--sample-every", "2"] + TINY) == 0
    for name in ("samples.png", "real.png", "losses.png", "samples_000002.png"):
        w, h = _png_size(out / name)
        assert w > 100 and h > 100, name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("steps", "seconds_per_step", "loss_d", "loss_g", "gp", "backend", "torch", "device",
                "batch_size", "seed"):
        assert key in metrics, key
    assert metrics["steps"] == 4 and metrics["batch_size"] == 8 and metrics["seed"] == 7
    assert metrics["device"] == "cpu" and metrics["torch"] == torch.__version__
    assert metrics["seconds_per_step"] > 0
    for key in ("loss_d", "loss_g", "gp"):
        assert isinstance(metrics[key], float) and metrics[key] == metrics[key], key  # finite, not NaN
    assert metrics["gp"] >= 0
    assert set(metrics["backend"]) == {"minibatch_std", "conv_transpose", "grad_norm"}
    assert all(v in ("reference", "cpu", "cuda", "triton") for v in metrics["backend"].values()), metrics["backend"]
    # The saved generator reloads and generates images.
    from fastgan.models import Generator
    ckpt = torch.load(out / "generator.pt")
    G = Generator(**ckpt["kwargs"])
    G.load_state_dict(ckpt["state_dict"])
    assert G(torch.randn(2, 8)).shape == (2, 1, 32, 32)
    assert "samples.png" in capsys.readouterr().out


def test_train_restores_thread_count(tmp_path):
    before = torch.get_num_threads()
    assert cli_main(["train", "--out", str(tmp_path), "--steps", "1"] + TINY[2:]) == 0
    assert torch.get_num_threads() == before


def test_train_is_reproducible(tmp_path):
    """Same seed, same losses (CPU, deterministic ops)."""
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert cli_main(["train", "--out", str(out), "--seed", "1"] + TINY[:2] + ["--steps", "2"] + TINY[2:]) == 0
        runs.append(json.loads((out / "metrics.json").read_text()))
    assert runs[0]["loss_d"] == runs[1]["loss_d"] and runs[0]["loss_g"] == runs[1]["loss_g"]


def test_train_help():
    proc = subprocess.run([sys.executable, "-m", "fastgan", "train", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    for flag in ("--dataset", "--steps", "--out", "--batch-size", "--device", "--seed", "--n-critic", "--lr"):
        assert flag in proc.stdout, flag
    assert f"default {train.DEFAULTS['steps']}" in " ".join(proc.stdout.split())  # argparse wraps lines


def test_bad_dataset_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "--dataset", "mnist", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'mnist'" in err and "digits" in err
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "10"], "not a multiple of 4"),
    (["--size", "24"], "power of two >= 16"),
    (["--ema", "1.5"], "--ema must be in [0, 1)"),
    (["--device", "tpu"], "--device"),
])
def test_bad_arguments_are_clear_errors(tmp_path, capsys, args, message):
    assert cli_main(["train", "--out", str(tmp_path / "x")] + TINY + args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["train", "--device", "cuda", "--out", str(tmp_path / "x")] + TINY) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu" in err


def test_steps_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--steps", "0"])
    assert "must be a positive integer" in capsys.readouterr().err


def test_missing_sklearn_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from fastgan import data

    def no_sklearn():
        raise ImportError("the digits data set ships with scikit-learn, which is not installed: "
                          "pip install scikit-learn")

    monkeypatch.setattr(data, "_require_sklearn", no_sklearn)
    assert cli_main(["train", "--out", str(tmp_path / "x")] + TINY) == 2
    assert "pip install scikit-learn" in capsys.readouterr().err
