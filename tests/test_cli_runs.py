"""The CLI does not trust its run folder: ``eval`` and ``sample`` refuse files of different runs and garbage files
(one line naming the file, exit 2), ``train --resume`` refuses options that would change the run, fewer epochs
than trained, a resume that would lose epochs and a folder another command holds; every int option is checked
as it is parsed; histories and eval.json stay strict JSON when a metric is NaN or infinite."""

import fcntl
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

import funcvae
import funcvae.cli
from funcvae._runtime import lock

from test_cli_eval import SMALL_MODEL as MODEL_FILE  # a model file of one's own
from test_cli_eval import fake_load  # data.load serving a subset

TINY = ["--quiet", "--no-compile", "--hidden", "8", "--latent", "2"]


@pytest.fixture(scope="module")
def subset(fashion):
    return {"train": fashion[0][:256].clone(), "test": fashion[1][:128].clone()}


def train(out, *args):
    return funcvae.cli.main(["train", "--out", str(out), *TINY, *args])


def new_run(out, *args) -> Path:
    assert train(out, *args) == 0
    (run_dir,) = out.iterdir()
    return run_dir


@pytest.fixture(scope="module")
def runs(subset, tmp_path_factory):
    """Finished one-epoch runs: "a" (seed 0), "b" (a's model, seed 1), "wide" (another model), "file" (a model
    of one's own)."""
    root = tmp_path_factory.mktemp("runs")
    source = root / "my_vae.py"
    source.write_text(MODEL_FILE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(funcvae.data, "load", fake_load(subset, []))
        made = {"a": new_run(root / "a", "--epochs", "1"), "b": new_run(root / "b", "--epochs", "1", "--seed", "1"),
                "wide": new_run(root / "wide", "--epochs", "1", "--hidden", "16")}
        assert funcvae.cli.main(["train", "--out", str(root / "file"), "--quiet", "--no-compile", "--epochs", "1",
                                 "--model", f"{source}:model"]) == 0
        (made["file"],) = (root / "file").iterdir()
    return made


@pytest.fixture
def loads(subset, monkeypatch):
    monkeypatch.setattr(funcvae.data, "load", fake_load(subset, []))


def copy(run_dir: Path, to: Path) -> Path:
    return Path(shutil.copytree(run_dir, to / run_dir.name))


def snapshot(run_dir: Path) -> dict:
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


def one_line_error(capsys, *names) -> str:
    """stderr, checked to be one line "error: ..." naming each of ``names``."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert all(str(name) in err for name in names), err
    return err


def command(name: str, run_dir: Path) -> list[str]:
    return {"eval": ["eval", str(run_dir), "--k", "2", "--n", "8"], "sample": ["sample", str(run_dir), "--n", "2"],
            "resume": ["train", "--resume", str(run_dir), "--epochs", "2", "--quiet"]}[name]


MIXES = {  # a copy of run "a" (or "file") with files of another run; what the refusal says
    "params-of-another-model": ("a", {"params.safetensors": "wide"}, "model"),
    "params-of-another-model-no-checkpoint": ("a", {"params.safetensors": "wide", "checkpoint.safetensors": None},
                                              "model"),
    "params-of-another-seed": ("a", {"params.safetensors": "b"}, "is not the params of"),
    "history-of-another-seed": ("a", {"history.jsonl": "b"}, "is not the history of"),
    "params-and-checkpoint-of-another-seed": ("a", {"params.safetensors": "b", "checkpoint.safetensors": "b"},
                                              "does not describe the run of"),
    "built-in-params-in-a-model-file-run": ("file", {"params.safetensors": "a"}, "do not match"),
    "history-without-a-checkpoint-left-out": ("a", {"history.jsonl": None}, "is not the history of"),
    "config-of-another-model": ("a", {"config.json": "wide"}, "model"),
    "config-of-another-seed": ("a", {"config.json": "b"}, "does not describe the run of"),
}


@pytest.mark.parametrize("name", ["eval", "sample"])
@pytest.mark.parametrize("base, mix, complaint", MIXES.values(), ids=MIXES.keys())
def test_a_folder_mixing_two_runs_is_refused(runs, tmp_path, capsys, loads, name, base, mix, complaint):
    run_dir = copy(runs[base], tmp_path)
    for file, source in mix.items():
        (run_dir / file).unlink()
        if source is not None:
            shutil.copy(runs[source] / file, run_dir / file)
    before = snapshot(run_dir)
    assert funcvae.cli.main(command(name, run_dir)) == 2
    err = one_line_error(capsys, run_dir)
    assert complaint in err
    assert snapshot(run_dir) == before  # no eval.json, no picture


def test_without_a_checkpoint_the_params_and_history_are_taken_as_they_are(runs, tmp_path, capsys, loads):
    """The decision for a folder without checkpoint.safetensors: checked for its model and well-formed files only."""
    run_dir = copy(runs["a"], tmp_path)
    (run_dir / "checkpoint.safetensors").unlink()
    for name in ("eval", "sample"):
        assert funcvae.cli.main(command(name, run_dir)) == 0
    assert json.loads((run_dir / "eval.json").read_text())["n"] == 8


def config_with(**changes):
    """A change to config.json: top-level fields, or "fit" fields as fit_<name>."""
    def change(config):
        for key, value in changes.items():
            (config["fit"] if key.startswith("fit_") else config)[key.removeprefix("fit_")] = value
        return json.dumps(config).encode()
    return change


GARBAGE = {  # file, its new bytes (or a change to config.json's dict), what the one line says, the commands
    "config-not-json": ("config.json", b"{not json", "is not JSON", "eval sample resume"),
    "config-a-list": ("config.json", b"[1, 2]", "must hold a JSON object, not list", "eval sample resume"),
    "config-no-fit": ("config.json", lambda c: json.dumps({k: v for k, v in c.items() if k != "fit"}).encode(),
                      "fit is missing", "eval sample resume"),
    "config-lr-a-string": ("config.json", config_with(fit_lr="fast"), "fit.lr must be a number, got 'fast'",
                           "eval sample resume"),
    "config-negative-seed": ("config.json", config_with(fit_seed=-1), "fit.seed must be an int >= 0, got -1",
                             "eval sample resume"),
    "config-seed-a-bool": ("config.json", config_with(fit_seed=True), "fit.seed must be an int >= 0, got True",
                           "eval sample resume"),
    "config-unknown-setting": ("config.json", config_with(fit_resume=False), "settings train does not write: resume",
                               "eval sample resume"),
    "config-unknown-dataset": ("config.json", config_with(dataset="cifar10"), "dataset must be one of",
                               "eval sample resume"),
    "config-model-not-a-spec": ("config.json", config_with(model={"hidden": "x"}), "model does not describe",
                                "eval sample resume"),
    "config-model-latent-a-string": ("config.json", lambda c: config_with(model={**c["model"], "latent": "2"})(c),
                                     "model does not describe", "eval sample resume"),
    "config-lr-negative": ("config.json", config_with(fit_lr=-1), "lr must be a finite number > 0, got -1", "resume"),
    "history-not-json": ("history.jsonl", b"{\"epoch\": 1, garbage\n", "line 1 is not JSON", "eval sample"),
    "history-a-list": ("history.jsonl", b"[1]\n", "line 1: an epoch's record must be a JSON object", "eval sample"),
    "history-no-recon": ("history.jsonl", b"{\"epoch\": 1}\n", "line 1: recon is missing", "eval sample"),
    "history-epoch-2-first": ("history.jsonl", lambda h: h.replace(b'"epoch": 1', b'"epoch": 2'),
                              "line 1: epoch 2, expected 1", "eval sample"),
    "history-not-text": ("history.jsonl", b"\xff\xfe\n", "is not text", "eval sample"),
    "params-garbage": ("params.safetensors", b"garbage", "", "eval sample"),
    "params-truncated": ("params.safetensors", lambda b: b[:len(b) // 2], "", "eval sample"),
    "checkpoint-garbage": ("checkpoint.safetensors", b"garbage", "", "eval sample resume"),
    "checkpoint-truncated": ("checkpoint.safetensors", lambda b: b[:len(b) // 2], "", "eval sample resume"),
}
CASES = [pytest.param(file, content, complaint, name, id=f"{case}-{name}")
         for case, (file, content, complaint, names) in GARBAGE.items() for name in names.split()]


@pytest.mark.parametrize("file, content, complaint, name", CASES)
def test_a_garbage_file_is_a_one_line_error_naming_it(runs, tmp_path, capsys, loads, file, content, complaint, name):
    run_dir = copy(runs["a"], tmp_path)
    path = run_dir / file
    if callable(content):
        content = content(json.loads(path.read_text()) if file == "config.json" else path.read_bytes())
    path.write_bytes(content)
    before = snapshot(run_dir)
    assert funcvae.cli.main(command(name, run_dir)) == 2
    assert complaint in one_line_error(capsys, path)
    assert snapshot(run_dir) == before


def test_resume_takes_options_equal_to_the_recorded_ones(tmp_path, capsys, loads):
    """Options that say what the run already is change nothing: taken, the run continues."""
    run_dir = new_run(tmp_path, "--epochs", "1", "--lr", "2e-3", "--batch-size", "64", "--seed", "3")
    assert funcvae.cli.main(["train", "--resume", str(run_dir), "--epochs", "2", "--quiet", "--lr", "0.002",
                             "--batch-size", "64", "--seed", "3", "--hidden", "8", "--latent", "2", "--no-compile",
                             "--objective", "elbo", "--beta", "1", "--out", str(tmp_path)]) == 0
    assert [json.loads(line)["epoch"] for line in (run_dir / "history.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((run_dir / "config.json").read_text())["fit"]["epochs"] == 2


@pytest.mark.parametrize("recorded, given, flag", [
    (["--batch-size", "64"], ["--batch-size", "128"], "--batch-size"),  # 128, 0, raise: the parser's defaults
    (["--seed", "1"], ["--seed", "0"], "--seed"),
    (["--on-nonfinite", "skip"], ["--on-nonfinite", "raise"], "--on-nonfinite"),
    ([], ["--hidden", "8", "8"], "--hidden"),
    ([], ["--out", "elsewhere"], "--out"),
    ([], ["--batch", "64"], "--batch-size"),  # an abbreviation
    ([], ["--lr=0.01"], "--lr"),
    ([], ["--momentum", "0.9"], "--momentum"),  # sgd's, not the run's adam's
])
def test_resume_refuses_a_given_option_unlike_the_recorded_one_even_at_its_default(tmp_path, capsys, loads,
                                                                                    recorded, given, flag):
    run_dir = new_run(tmp_path, "--epochs", "1", *recorded)
    before = snapshot(run_dir)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        funcvae.cli.main(["train", "--resume", str(run_dir), "--epochs", "2", *given])
    assert info.value.code == 2
    assert f"{flag} would change them" in capsys.readouterr().err
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("removed", [["checkpoint.safetensors"], ["checkpoint.safetensors", "history.jsonl"],
                                     ["checkpoint.safetensors", "params.safetensors"]])
def test_resume_without_a_checkpoint_refuses_to_lose_the_trained_epochs(tmp_path, capsys, loads, removed):
    run_dir = new_run(tmp_path, "--epochs", "1")
    for name in removed:
        (run_dir / name).unlink()
    before = snapshot(run_dir)
    capsys.readouterr()
    assert funcvae.cli.main(command("resume", run_dir)) == 2
    assert "no checkpoint.safetensors to continue from" in one_line_error(capsys, run_dir)
    assert snapshot(run_dir) == before


def test_resume_without_a_checkpoint_or_an_epoch_starts_afresh(tmp_path, capsys, loads):
    """Nothing trained is there (a run killed before its first checkpoint): resuming loses nothing."""
    run_dir = new_run(tmp_path, "--epochs", "1")
    straight = funcvae.leaves_by_path(funcvae.load_params(run_dir / "params.safetensors"))
    for name in ("checkpoint.safetensors", "params.safetensors"):
        (run_dir / name).unlink()
    (run_dir / "history.jsonl").write_text("\n")
    assert funcvae.cli.main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    again = funcvae.leaves_by_path(funcvae.load_params(run_dir / "params.safetensors"))
    assert again.keys() == straight.keys() and all(torch.equal(again[k], straight[k]) for k in again)


def test_resume_refuses_fewer_epochs_than_trained_before_writing(tmp_path, capsys, loads):
    run_dir = new_run(tmp_path, "--epochs", "2")
    before = snapshot(run_dir)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        funcvae.cli.main(["train", "--resume", str(run_dir), "--epochs", "1"])
    assert info.value.code == 2
    assert "--epochs 1: " in capsys.readouterr().err
    assert snapshot(run_dir) == before

    config = json.loads((run_dir / "config.json").read_text())
    config["fit"]["epochs"] = 1  # edited by hand
    (run_dir / "config.json").write_text(json.dumps(config))
    before = snapshot(run_dir)
    assert funcvae.cli.main(["train", "--resume", str(run_dir), "--quiet"]) == 2
    assert "fit.epochs is 1, fewer than the 2 epochs" in one_line_error(capsys, run_dir / "config.json")
    assert snapshot(run_dir) == before


def test_an_interrupted_run_is_unfinished_to_eval_and_cannot_be_shortened(tmp_path, capsys, loads, monkeypatch):
    """SIGINT as epoch 2 ends (of 4): the checkpoint holds 2 epochs, params.safetensors is epoch 1's."""
    run_dir = new_run(tmp_path, "--epochs", "1", "--batch-size", "64")
    rows = funcvae.cli.train.format_row

    def interrupt_at_epoch_2(record):
        if record["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return rows(record)

    monkeypatch.setattr(funcvae.cli.train, "format_row", interrupt_at_epoch_2)
    assert funcvae.cli.main(["train", "--resume", str(run_dir), "--epochs", "4", "--quiet"]) == 128 + signal.SIGINT
    monkeypatch.setattr(funcvae.cli.train, "format_row", rows)
    assert funcvae.load(run_dir / "checkpoint.safetensors").epoch == 2
    capsys.readouterr()
    for name in ("eval", "sample"):
        assert funcvae.cli.main(command(name, run_dir)) == 2
        assert "is an unfinished run" in one_line_error(capsys, f"train --resume {run_dir}")
    with pytest.raises(SystemExit):
        funcvae.cli.main(["train", "--resume", str(run_dir), "--epochs", "1"])
    assert f"--epochs 1: {run_dir} has trained 2 epochs already" in capsys.readouterr().err
    assert funcvae.cli.main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert funcvae.cli.main(command("eval", run_dir)) == 0


def test_resume_of_a_folder_another_command_holds_is_refused(tmp_path, capsys, loads):
    run_dir = new_run(tmp_path, "--epochs", "1")
    before = snapshot(run_dir)
    fd = os.open(run_dir / lock.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another process's lock.hold does: another open file description
        os.write(fd, json.dumps({"pid": 424242, "command": "python -m funcvae train --resume RUN"}).encode())
        capsys.readouterr()
        assert funcvae.cli.main(command("resume", run_dir)) == 1
        one_line_error(capsys, run_dir, 424242)
        assert {k: v for k, v in snapshot(run_dir).items() if k != lock.LOCK_FILE} == before
    finally:
        os.close(fd)
        (run_dir / lock.LOCK_FILE).unlink()
    assert funcvae.cli.main(command("resume", run_dir)) == 0


@pytest.mark.parametrize("args, option, minimum", [
    (["eval", "RUN", "--seed", "-1"], "--seed", 0), (["sample", "RUN", "--seed", "-1"], "--seed", 0),
    (["train", "--seed", "-1"], "--seed", 0), (["sweep", "--seed", "-1"], "--seed", 0),
    (["sample", "RUN", "--n", "0"], "--n", 1), (["eval", "RUN", "--k", "0"], "--k", 1),
    (["train", "--objective", "iwae", "--k", "0"], "--k", 1), (["train", "--epochs", "0"], "--epochs", 1),
    (["sweep", "--epochs", "0"], "--epochs", 1), (["train", "--batch-size", "0"], "--batch-size", 1),
    (["sweep", "--batch-size", "-3"], "--batch-size", 1), (["train", "--latent", "0"], "--latent", 1),
    (["sweep", "--hidden", "8", "0"], "--hidden", 1), (["train", "--pseudo-inputs", "0"], "--pseudo-inputs", 1),
    (["train", "--checkpoint-every", "0"], "--checkpoint-every", 1),
    (["train", "--resume", "RUN", "--epochs", "0"], "--epochs", 1),
])
def test_every_int_option_is_checked_as_it_is_parsed(tmp_path, capsys, loads, args, option, minimum):
    args = [a.replace("RUN", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as info:
        funcvae.cli.main([*args, "--out", str(tmp_path)] if args[0] in ("train", "sweep") else args)
    assert info.value.code == 2
    assert f"argument {option}: must be an int >= {minimum}, got" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def strict(text: str):
    """JSON as strict parsers read it: NaN and Infinity are not numbers."""
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_metrics_stay_strict_json_and_print_as_nan(tmp_path, capsys, loads):
    """A diverged run (every step of epoch 2 skipped): its history and eval.json are strict JSON, "NaN" and
    "Infinity" read back as floats by funcvae._runtime.records; the table prints nan; eval still writes eval.json."""
    with pytest.warns(RuntimeWarning, match="not finite"):
        run_dir = new_run(tmp_path, "--epochs", "2", "--lr", "1e30", "--on-nonfinite", "skip")
    history = [funcvae._runtime.records.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert all(strict(line) for line in (run_dir / "history.jsonl").read_text().splitlines())
    assert history[1]["skipped"] > 0 and history[1]["recon"] != history[1]["recon"]  # NaN
    capsys.readouterr()
    with pytest.warns(RuntimeWarning, match="not finite"):
        assert funcvae.cli.main(["train", "--resume", str(run_dir), "--epochs", "3", "--quiet"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("    ")]
    assert [r[0].strip() for r in rows] == ["1", "2", "3"] and rows[1][1].strip() == "nan"
    assert funcvae.cli.main(command("eval", run_dir)) == 0
    result = strict((run_dir / "eval.json").read_text())
    assert "NaN" in result.values() or "Infinity" in result.values()
    assert funcvae._runtime.records.loads((run_dir / "eval.json").read_text())["n"] == 8


def test_a_bad_input_fit_refuses_is_one_line_and_a_later_error_keeps_its_traceback(tmp_path, capsys, subset,
                                                                                  monkeypatch):
    """fit checks its inputs before its first step: a ValueError then (here: held-out images of another size,
    which only fit checks) is one line and exit 2, whatever its words; a ValueError once epochs have ended is a
    bug, raised."""
    bad = {"train": subset["train"], "test": subset["test"][:, :, :27].clone()}
    monkeypatch.setattr(funcvae.data, "load", fake_load(bad, []))
    assert train(tmp_path / "bad", "--epochs", "1") == 2
    one_line_error(capsys, "val_data")

    monkeypatch.setattr(funcvae.data, "load", fake_load(subset, []))
    fit = funcvae.fit

    def fit_with_a_bug(*args, callbacks, **kwargs):
        def broken(record):
            for callback in callbacks:
                callback(record)
            raise ValueError("a bug after an epoch")
        return fit(*args, callbacks=[broken], **kwargs)

    monkeypatch.setattr(funcvae, "fit", fit_with_a_bug)
    with pytest.raises(funcvae.callbacks.CallbackError, match="ValueError: a bug after an epoch"):
        train(tmp_path / "bug", "--epochs", "1")
