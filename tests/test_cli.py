"""The numpyro-wjs command line: the quick demo end to end, and its usage errors."""

import contextlib
import io
import os

import matplotlib.image as mpimg
import numpy as np
import pytest

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
    header = next(words for words in lines if words[0] == "evaluations")
    col = {name: i + 1 for i, name in enumerate(header)}
    rows = {words[0]: words for words in lines if len(words) == len(header) + 1}
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
    assert set(cli._COMMANDS) == {"demo", "train"}
    assert "demo" in parser.format_help()


def test_train_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    from numpyro_wjs.train import load_denoiser

    out = tmp_path / "den"
    assert cli.main(["train", "--data", "mixture", "--sigma", "1.0", "--steps", "20", "--hidden", "16",
                     "--out", str(out)]) == 0
    assert "held-out MSE" in capsys.readouterr().out
    net = load_denoiser(out)
    assert net(np.zeros(2, np.float32)).shape == (2,)


def test_train_command_rejects_bad_sigmas(capsys):
    assert cli.main(["train", "--sigma", "0"]) == 2
    assert cli.main(["train", "--sigma-range", "1", "0.5"]) == 2
    assert "sigma" in capsys.readouterr().err
