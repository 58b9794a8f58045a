"""The numpyro-wjs command line: the quick demo end to end, and its usage errors."""

import argparse
import contextlib
import io
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from flax import nnx

from numpyro_wjs import cli


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One ``demo --quick`` run shared by the tests that read its output."""
    out = tmp_path_factory.mktemp("demo") / "nested" / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["demo", "--quick", "--out", str(out)])
    return code, out, stdout.getvalue()


def test_demo_quick_succeeds_and_writes_files(quick_demo):
    code, out, _ = quick_demo
    assert code == 0
    for name in ("trace.png", "occupancy.png", "paths.png"):
        image = mpimg.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
        assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 50
    summary = (out / "summary.md").read_text()
    assert "| sampler |" in summary and "| NUTS |" in summary and "| WalkJump |" in summary
    assert "seed 0" in summary and "budget 2000" in summary


def test_demo_quick_prints_progress_and_table(quick_demo):
    _, _, printed = quick_demo
    assert "running NUTS" in printed and "running WalkJump" in printed
    lines = [line.split() for line in printed.splitlines() if line.strip()]
    start = next(i for i, words in enumerate(lines) if words[0] == "evaluations")
    header = lines[start]
    col = {name: i + 1 for i, name in enumerate(header)}
    body = itertools.takewhile(lambda words: len(words) == len(header) + 1, lines[start + 2:])  # after "sampler"
    rows = {words[0]: words for words in body}
    assert set(rows) == {"NUTS", "WalkJump"}
    # All chains start in mode 0. The modes are 12 standard deviations apart: NUTS
    # cannot cross (a barrier of about 70 nats), so it never switches; the smoothed
    # walk crosses every few dozen steps, so in 2 x 2000 steps it switches many times.
    assert int(rows["NUTS"][col["switches"]]) == 0
    assert int(rows["WalkJump"][col["switches"]]) > 20
    assert int(rows["WalkJump"][col["modes_visited"]]) == 5


def test_bad_output_folder_is_a_file(tmp_path, capsys):
    path = tmp_path / "file.txt"
    path.write_text("x")
    assert cli.main(["demo", "--quick", "--out", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not a folder" in err and "--out" in err and "Traceback" not in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_bad_output_folder_not_writable(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert cli.main(["demo", "--quick", "--out", str(locked / "sub")]) == 2
    finally:
        locked.chmod(0o700)
    assert "cannot write" in capsys.readouterr().err


def test_bad_output_folder_permission_denied(tmp_path, monkeypatch, capsys):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", denied)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot write to output folder" in err and "Permission denied" in err


def test_bad_output_folder_under_a_file(tmp_path, capsys):
    path = tmp_path / "file.txt"
    path.write_text("x")
    assert cli.main(["demo", "--out", str(path / "sub")]) == 2
    assert "cannot write to output folder" in capsys.readouterr().err


def test_unknown_option_and_bad_values_exit_2(capsys):
    for argv in (["demo", "--frobnicate"], ["demo", "--budget", "0"], ["demo", "--chains", "x"], ["nope"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().err


def test_mnist_without_pretrained_weights(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no_such_dir"
    monkeypatch.setattr(cli, "MNIST_DENOISER_DIR", missing)
    out = tmp_path / "out"
    assert cli.main(["demo", "--mnist", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pretrained MNIST denoiser" in err and str(missing) in err and "without --mnist" in err
    assert not out.exists()


def test_parser_lists_commands():
    parser = cli.build_parser()
    assert set(cli._COMMANDS) == {"demo", "train", "sample"}
    assert "demo" in parser.format_help()


def test_train_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    from numpyro_wjs.nn.train import load_denoiser

    out = tmp_path / "den"
    assert cli.main(["train", "--data", "mixture", "--sigma", "1.0", "--steps", "20", "--hidden", "16",
                     "--out", str(out)]) == 0
    assert "held-out MSE" in capsys.readouterr().out
    net = load_denoiser(out)
    assert net(np.zeros(2, np.float32)).shape == (2,)


def test_train_command_rejects_bad_sigmas(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--sigma", "0"])
    assert info.value.code == 2
    assert cli.main(["train", "--sigma-range", "1", "0.5"]) == 2
    assert "sigma" in capsys.readouterr().err


# ------------------------------------------------------------ train: the user's files

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train", "--data", "mixture", "--hidden", "16", "--steps", "20", "--checkpoint-every", "10"]


def run_cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    code = "import sys; from numpyro_wjs.cli import main; sys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_train_never_shadows_a_saved_model(tmp_path):
    """End to end: training into a folder with a saved model refuses; with --overwrite
    the folder afterwards loads the new model, never the stale one."""
    from numpyro_wjs.nn.denoisers import MLP
    from numpyro_wjs.nn.train import load_denoiser, save_checkpoint

    out = tmp_path / "out"
    save_checkpoint(out, MLP(2, (8,), sigma=0.2, rngs=nnx.Rngs(0)))
    refused = run_cli(*TINY, "--sigma", "0.5", "--out", str(out))
    stdout, stderr = refused.communicate(timeout=300)
    assert refused.returncode == 2, stderr  # an unusable --out is a usage error
    assert stderr.count("\n") == 1 and "saved model" in stderr and "--overwrite" in stderr
    assert "another --out folder" in stderr
    assert load_denoiser(out).sigma == 0.2
    done = run_cli(*TINY, "--sigma", "0.5", "--out", str(out), "--overwrite")
    stdout, stderr = done.communicate(timeout=300)
    assert done.returncode == 0, stderr
    net = load_denoiser(out)
    assert net.sigma == 0.5 and net.config["hidden"] == [16]


def test_train_interrupted_during_saves_prints_one_line(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("train", "--data", "mixture", "--hidden", "16", "--steps", "100000",
                   "--checkpoint-every", "1", "--out", str(out))
    deadline = time.monotonic() + 240
    while not any(out.glob("step_*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # several saves a second: the interrupt lands in or near one
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("train")]
    assert proc.returncode == 130 and lines == ["numpyro-wjs train: interrupted"], stderr[-3000:]
    assert not list(out.glob("*.orbax-checkpoint-tmp*")), "a temporary checkpoint folder was left behind"


def test_train_refuses_the_package_and_conflicting_flags(capsys):
    from numpyro_wjs.nn.pretrained import MNIST_DENOISER_DIR

    before = sorted(p.name for p in MNIST_DENOISER_DIR.iterdir())
    cases = {
        ("--out", str(MNIST_DENOISER_DIR)): "inside the installed numpyro_wjs package",
        ("--out", str(MNIST_DENOISER_DIR / "new")): "inside the installed numpyro_wjs package",
        ("--sigma", "0.5", "--sigma-range", "0.1", "1"): "exclude each other",
        ("--data", "digits", "--hidden", "16"): "--hidden does not apply to --data digits",
        ("--data", "mixture", "--channels", "8"): "--channels does not apply to --data mixture",
        ("--data-path", ""): "--data-path is empty",
        ("--data", "digits", "--download"): "needs no download",
    }
    for argv, message in cases.items():
        assert cli.main(["train", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in MNIST_DENOISER_DIR.iterdir()) == before
    assert not (MNIST_DENOISER_DIR / "new").exists()
    for bad in (["--lr", "-1"], ["--lr", "nan"], ["--sigma", "-0.5"]):
        with pytest.raises(SystemExit) as info:
            cli.main(["train", *bad])
        assert info.value.code == 2
    assert "expected a positive number" in capsys.readouterr().err


def test_train_failures_are_one_line_exit_1(tmp_path, capsys):
    assert cli.main(["train", "--data", "mnist", "--data-path", str(tmp_path / "nonexistent")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "t10k-images-idx3-ubyte" in err and "--download" in err
    out = tmp_path / "run"
    assert cli.main([*TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main([*TINY, "--out", str(out), "--batch-size", "16"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "settings differ" in err and "--overwrite" in err


def test_train_continues_a_finished_run_and_warns_in_one_line(tmp_path, capsys):
    from numpyro_wjs.nn.train import checkpoint_metadata

    out = tmp_path / "run"
    assert cli.main([*TINY, "--out", str(out)]) == 0
    for file in (out / f"step_{20:08d}" / "weights").rglob("*"):
        if file.is_file():
            file.write_bytes(b"damaged")
    capsys.readouterr()
    assert cli.main([*TINY[:-4], "--steps", "30", "--checkpoint-every", "10", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "skipping damaged checkpoint" in warning[0]
    meta = checkpoint_metadata(out)
    assert meta["step"] == 30 and meta["train"]["continued_from"] == [20]


def test_train_saved_model_in_out_is_a_usage_error(tmp_path, capsys):
    from numpyro_wjs.nn.denoisers import MLP
    from numpyro_wjs.nn.train import save_checkpoint

    out = tmp_path / "out"
    save_checkpoint(out, MLP(2, (8,), sigma=0.2, rngs=nnx.Rngs(0)))
    assert cli.main([*TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("numpyro-wjs train: error: ")
    assert "saved model" in err and "pass --overwrite to replace it, or choose another --out folder" in err


def test_train_refuses_a_folder_of_other_files_unless_overwrite(tmp_path, capsys):
    """Checkpoints never land among a demo's figures unasked; with --overwrite they do,
    with a warning, the figures are kept, and the run then resumes without it."""
    from numpyro_wjs.nn.train import load_denoiser

    out = tmp_path / "figures"
    out.mkdir()
    for name in ("summary.md", "trace.png", "paths.png"):
        (out / name).write_text("x")
    (out / ".DS_Store").write_text("x")
    assert cli.main([*TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a training run (paths.png, summary.md, trace.png)" in err
    assert "new or empty --out folder" in err and "--overwrite" in err and ".DS_Store" not in err
    assert sorted(p.name for p in out.iterdir()) == [".DS_Store", "paths.png", "summary.md", "trace.png"]
    assert cli.main([*TINY, "--out", str(out), "--overwrite"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warning == [f"numpyro-wjs train: warning: training beside files that are not checkpoints in {out}: "
                       "paths.png, summary.md, trace.png"]
    assert all((out / name).read_text() == "x" for name in ("summary.md", "trace.png", "paths.png"))
    assert load_denoiser(out).config["hidden"] == [16]
    assert cli.main([*TINY, "--out", str(out)]) == 0  # a training run now: resumed (finished)
    assert "already complete at step 20" in capsys.readouterr().err


def test_train_rerun_of_a_finished_run_says_so_once(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main([*TINY, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"train: the run in {out} is already complete at step 20; to train it further, "
        "pass steps > 20 (CLI: a larger --steps)"
    ]
    assert "held-out MSE" in captured.out and f"checkpoint in {out}" in captured.out


def test_demo_refuses_another_runs_files(quick_demo, tmp_path, capsys):
    """The MNIST demo never mixes its files with the mixture demo's (nor the reverse);
    --overwrite deletes the other demo's files and keeps anything else."""
    _, out, _ = quick_demo
    before = sorted(p.name for p in out.iterdir())
    assert cli.main(["demo", "--quick", "--mnist", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "files of another run (occupancy.png, paths.png, trace.png)" in err
    assert "new or empty --out folder" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == before
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for name in ("summary.md", "samples.png", "walk_jump_strip.png"):
        (mnist / name).write_text("x")
    cli._check_demo_out(mnist, "mnist", overwrite=False)  # its own files: replaced, no complaint
    (mnist / "notes.txt").write_text("x")
    assert cli.main(["demo", "--quick", "--out", str(mnist)]) == 2
    assert "(notes.txt, samples.png, walk_jump_strip.png)" in capsys.readouterr().err
    cli._check_demo_out(mnist, "mixture", overwrite=True)
    assert sorted(p.name for p in mnist.iterdir()) == ["notes.txt", "summary.md"]
    assert "Deleted samples.png, walk_jump_strip.png of the other demo" in capsys.readouterr().out


def _help(command):
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return " ".join(stdout.getvalue().split())


def test_help_states_every_default():
    train = _help("train")
    for default in ("training data: MNIST digits 0-7999", "(default: digits)", "$NUMPYRO_WJS_MNIST",
                    "(default: 0.5)", "(default: 2000;", "(default: 64)", "(default: 0.001)",
                    "(default: 16 32)", "(default: 256 256)", "(default: 0)", "(default: 500)",
                    "(default: ./wjs-denoiser;", "(default: off;", "(default: none)"):
        assert default in train, default
    demo = _help("demo")
    for default in ("(default: ./wjs-output)", "(default: 0)", "(default: 20000; --quick: 2000; --mnist: 200",
                    "(default: 4; --quick: 2;", "(default: 500; --quick: 200;"):
        assert default in demo, default
    parser = cli.build_parser()
    for name, command in cli._COMMANDS.items():
        sub = argparse.ArgumentParser()
        command.add_arguments(sub)
        for action in sub._actions:
            if action.option_strings and action.nargs != 0:  # options taking a value, not flags
                assert "(default: " in action.help, (name, action.option_strings)
    assert parser.format_help()


def test_demo_mnist_shows_what_it_does_and_a_progress_bar(tmp_path, capsys):
    out = tmp_path / "mnist"
    assert cli.main(["demo", "--mnist", "--budget", "3", "--warmup", "2", "--chains", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("Loading the pretrained denoiser") and "classifier" in lines[0]
    assert lines[1].startswith("Walk-jump on MNIST") and "2 warmup jumps, then 3 jumps, 2 chain(s)" in lines[1]
    assert lines[2].startswith("Compiling the sampler")
    bar = captured.err.replace("\r", "\n").splitlines()
    assert [line.split(":")[0] for line in bar if "/5 [" in line][:2] == ["compiling", "warmup"]
    assert any(line.startswith("sampling: 100%") and "5/5" in line for line in bar)
    assert "Labelling the jumps" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["samples.png", "summary.md", "walk_jump_strip.png"]
