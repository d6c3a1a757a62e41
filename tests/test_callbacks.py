"""fit's callbacks: plain functions get each record; objects get the start, every step's running means, each
epoch's record, params and optimiser state, and the end; a callback that raises is named with its epoch and
leaves the last checkpoint whole. The loggers: TensorBoard event files read back by TensorBoard's own reader
hold the history, learning rate, KL per dimension, images and hparams; the CSV table holds the history and
continues on resume; the W&B example logs the history through a stand-in of its API."""

import importlib.util
import math
import sys
import types
from csv import DictReader
from pathlib import Path

import numpy as np
import pytest
import torch

import funcvae
import funcvae.cli
from funcvae import callbacks as C
from funcvae import optim, schedules

SMALL = dict(hidden=(16,), latent=4)
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="pip install 'funcvae[tensorboard]'")
STEPS = 4  # steps per epoch: 256 examples in batches of 64


@pytest.fixture(scope="module")
def data(fashion):
    """256 training and 32 held-out real images."""
    return fashion[0][:256].clone(), fashion[1][:32].clone()


def fit(data, epochs=2, params=None, **kw):
    x, x_val = data
    kw = {"batch_size": 64, "compile": False, "progress": False, "val_data": x_val, **kw}
    return funcvae.fit(funcvae.init(seed=0, **SMALL) if params is None else params, x, epochs=epochs, **kw)


class Recorder:
    """Every hook call, in order."""

    def __init__(self):
        self.calls = []

    def start(self, run):
        self.calls.append(("start", run))

    def step_end(self, step, metrics):
        self.calls.append(("step_end", step, metrics))

    def epoch_end(self, record, params, opt_state):
        self.calls.append(("epoch_end", record, params, opt_state))

    def end(self):
        self.calls.append(("end",))

    def of(self, hook):
        return [c[1:] for c in self.calls if c[0] == hook]


def same(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(funcvae.leaves_by_path(a).values(),
                                                 funcvae.leaves_by_path(b).values()))


def events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    found = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    found.Reload()
    return found


def scalars(found, tag) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in found.Scalars(tag)]


def session_hparams(found) -> dict:
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    content = found.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    values = HParamsPluginData.FromString(content).session_start_info.hparams
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in values.items()}


# -- The protocol ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def watched(data):
    """A two-epoch run with a plain function and a ``Recorder`` as callbacks: (params, history, records, hooks)."""
    plain, hooks = [], Recorder()
    return (*fit(data, callbacks=[plain.append, hooks]), plain, hooks)


def test_functions_get_records_and_objects_get_every_hook_in_order(watched):
    params, history, plain, hooks = watched
    assert plain == history
    assert [c[0] for c in hooks.calls] == ["start"] + (["step_end"] * STEPS + ["epoch_end"]) * 2 + ["end"]
    (run,), = hooks.of("start")
    assert (run.models, run.steps_per_epoch, run.epoch) == (None, STEPS, 0)
    assert run.settings["batch_size"] == 64 and run.settings["examples"] == 256
    assert run.settings["optimizer"].startswith("adam(lr=0.001") and run.settings["objective"].startswith("elbo(")
    assert same(run.params, funcvae.init(seed=0, **SMALL))
    steps = hooks.of("step_end")
    assert [s for s, _ in steps] == list(range(1, 2 * STEPS + 1))
    assert all(m[k].shape == () and m[k].dtype == torch.float64 for _, m in steps for k in ("recon", "kl", "loss"))
    ends = hooks.of("epoch_end")
    for (_, last), (record, _, _) in zip(steps[STEPS - 1::STEPS], ends):  # an epoch's last step: its averages
        assert float(last["recon"]) == record["recon"] and float(last["kl"]) == record["kl"]
    assert [r for r, _, _ in ends] == history
    first, final = ends[0][1], ends[1][1]
    assert same(final, params) and not same(first, final)  # copies: epoch 1's params were not overwritten
    assert all(optim.learning_rate(run.optimizer, s) == 1e-3 for _, _, s in ends)


def test_a_scheduled_learning_rate_is_read_at_the_states_step_count():
    decay = schedules.cosine_decay(1.0, 10)
    opt = optim.apply_if_finite(optim.chain(optim.clip_by_global_norm(1.0), optim.adam(decay)))
    state = opt.init({"w": torch.zeros(3)})
    assert optim.learning_rate(opt, state) == float(decay(torch.tensor(0)))
    inner = state.inner[1]._replace(count=torch.tensor(4))
    assert optim.learning_rate(opt, state._replace(inner=(state.inner[0], inner))) == float(decay(torch.tensor(4)))
    sgd = optim.sgd(0.5, momentum=0.9)
    assert optim.learning_rate(sgd, sgd.init({"w": torch.zeros(3)})) == 0.5
    clip = optim.clip_by_global_norm(1.0)
    assert optim.learning_rate(clip, clip.init({"w": torch.zeros(3)})) is None


def test_something_that_is_no_callback_is_refused_before_any_work(data):
    hooks = Recorder()
    with pytest.raises(TypeError, match=r"callbacks: 3 is neither a function f\(record\) nor an object"):
        fit(data, callbacks=[hooks, 3])
    assert hooks.calls == []


def test_a_callback_that_raises_is_named_with_its_epoch_and_the_last_checkpoint_stays_whole(data, watched, tmp_path):
    straight = watched[0]

    def boom(record):
        if record["epoch"] == 2:
            raise ZeroDivisionError("no")
    hooks = Recorder()
    with pytest.raises(C.CallbackError, match=r"callback .*boom failed at the end of epoch 2: ZeroDivisionError: no"
                       ) as caught:
        fit(data, callbacks=[hooks, boom], checkpoint_dir=tmp_path)
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert hooks.calls[-1] == ("end",)  # the others still end
    assert funcvae.load(tmp_path / funcvae.CHECKPOINT_FILE).epoch == 1
    resumed, history = fit(data, checkpoint_dir=tmp_path, resume=True)
    assert same(resumed, straight) and [r["epoch"] for r in history] == [1, 2]


def test_a_failing_step_hook_is_named_with_its_step_and_an_end_that_fails_after_an_error_warns(data):
    class Bad:
        def step_end(self, step, metrics):
            if step == 3:
                raise KeyError("k")

        def end(self):
            raise OSError("disk")

        def __repr__(self):
            return "Bad()"
    with pytest.warns(RuntimeWarning, match=r"callback Bad\(\) failed at the end of a run stopped by an error: "
                                            r"OSError: disk"):
        with pytest.raises(C.CallbackError, match=r"callback Bad\(\) failed at step 3 \(epoch 1\): KeyError"):
            fit(data, callbacks=[Bad()])


def test_flatten_names_nested_values_by_path():
    record = {"epoch": 1, "kl_groups": {"z1": 2.0, "z2": 0.5}, "val_kl_groups": None}
    assert C.flatten(record) == {"epoch": 1, "kl_groups/z1": 2.0, "kl_groups/z2": 0.5, "val_kl_groups": None}


# -- TensorBoard ------------------------------------------------------------------------------------------------

@needs_tensorboard
def test_tensorboard_holds_the_history_learning_rate_kl_per_dimension_images_and_hparams(data, tmp_path):
    images = data[1][:8]
    decay = schedules.cosine_decay(1e-3, 3 * STEPS)
    log = C.tensorboard(tmp_path / "tb", images=images, images_every=2)
    params, history = fit(data, callbacks=[log], kl_warmup=1, optimizer=optim.adam(decay))
    found = events(tmp_path / "tb")
    for key in ("recon", "kl", "loss", "val_recon", "val_kl", "val_loss", "beta", "skipped", "seconds"):
        assert scalars(found, key) == [(r["epoch"], float(np.float32(r[key]))) for r in history], key
    assert scalars(found, "lr") == [(e, float(np.float32(float(decay(torch.tensor(e * STEPS)))))) for e in (1, 2)]
    kl = funcvae.diagnostics.kl_per_dim(params, images)
    assert [scalars(found, f"kl_per_dim/{i}")[-1] for i in range(4)] == [(2, float(np.float32(v))) for v in kl.tolist()]
    assert [e.step for e in found.Images("samples")] == [2] and [e.step for e in found.Images("reconstructions")] == [2]
    assert (found.Images("reconstructions")[0].width, found.Images("reconstructions")[0].height) == (2 + 8 * 30, 2 + 2 * 30)
    shown = session_hparams(found)
    assert shown["batch_size"] == 64 and shown["epochs"] == 2 and shown["optimizer"].startswith("adam(lr=cosine")
    assert "checkpoint_dir" not in shown  # None: left out


@needs_tensorboard
def test_tensorboard_of_a_stack_writes_one_folder_per_model_and_hparams_can_be_given(data, tmp_path):
    stacked = funcvae.stack([funcvae.init(seed=s, **SMALL) for s in (0, 1)])
    log = C.tensorboard(tmp_path, hparams={"dataset": "fashion-mnist", "fit": {"lr": 3e-3, "seed": [0, 1]}})
    _, histories = fit(data, epochs=1, params=stacked, callbacks=[log], seed=(0, 1), lr=3e-3)
    for m, history in enumerate(histories):
        found = events(tmp_path / f"model_{m}")
        assert scalars(found, "loss") == [(1, float(np.float32(history[0]["loss"])))]
        assert scalars(found, "lr") == [(1, float(np.float32(3e-3)))]
        assert session_hparams(found) == {"dataset": "fashion-mnist", "fit/lr": 3e-3, "fit/seed": "[0, 1]", "model": m}
        assert found.Tags()["images"] == ["samples"]


@needs_tensorboard
def test_tensorboard_images_of_8_bit_levels_take_the_runs_scale(data, tmp_path):
    levels = (data[0] * 255).round().to(torch.uint8), (data[1] * 255).round().to(torch.uint8)
    log = C.tensorboard(tmp_path, images=levels[1][:4])
    params, _ = fit(levels, epochs=1, callbacks=[log], scale=255)
    assert torch.equal(log._x, levels[1][:4].reshape(4, -1).double().div(255).float())
    assert [e.step for e in events(tmp_path).Images("reconstructions")] == [1]


@needs_tensorboard
def test_a_logdir_that_cannot_be_written_fails_when_the_callback_is_made(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"logdir .*file.*run cannot be written: Not a directory"):
        C.tensorboard(tmp_path / "file" / "run")


def test_without_tensorboard_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'funcvae\[tensorboard\]'"):
        C.tensorboard(tmp_path)


@needs_tensorboard
def test_images_the_model_cannot_take_fail_before_the_first_step(data, tmp_path):
    hooks = Recorder()
    with pytest.raises(C.CallbackError, match=r"tensorboard\(.*\) failed at the start of the run: ValueError: .*images"):
        fit(data, callbacks=[C.tensorboard(tmp_path, images=torch.rand(4, 100)), hooks])
    assert hooks.of("step_end") == []


# -- CSV ------------------------------------------------------------------------------------------------------

def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(DictReader(f))


def test_csv_holds_every_key_flushed_each_epoch_and_a_resumed_run_continues_it(data, tmp_path):
    path = tmp_path / "logs" / "history.csv"
    seen = []
    log = [C.csv(path), lambda r: seen.append(rows(path))]  # each row is on disk when the next callback runs
    fit(data, epochs=1, callbacks=log, checkpoint_dir=tmp_path)
    with open(path, "a") as f:  # epoch 2 logged, then a stop before its checkpoint
        f.write("2," + ",".join(["1.0"] * (len(rows(path)[0]) - 1)) + "\n")
    _, history = fit(data, epochs=2, callbacks=log, checkpoint_dir=tmp_path, resume=True)
    assert [len(s) for s in seen] == [1, 2]
    got = rows(path)
    assert list(got[0]) == list(history[0]) and len(got) == 2
    for row, record in zip(got, history):
        assert {k: None if v == "" else float(v) for k, v in row.items()} == record


def test_csv_of_a_stack_has_a_model_column_and_a_new_run_replaces_the_file(data, tmp_path):
    stacked = funcvae.stack([funcvae.init(seed=s, **SMALL) for s in (0, 1)])
    (tmp_path / "h.csv").write_text("epoch,loss\n1,5.0\n")
    _, histories = fit(data, epochs=1, params=stacked, callbacks=[C.csv(tmp_path / "h.csv")], val_data=None)
    assert [(r["model"], float(r["loss"])) for r in rows(tmp_path / "h.csv")] == [
        (str(m), h[0]["loss"]) for m, h in enumerate(histories)]


def test_a_csv_path_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"csv: .* is a folder, not a file"):
        C.csv(tmp_path)


# -- The W&B example -----------------------------------------------------------------------------------------

def test_the_wandb_example_logs_each_record_and_the_settings(data, monkeypatch):
    logged = {}

    class Run:
        def log(self, values, step):
            logged.setdefault("rows", []).append((step, values))

        def finish(self):
            logged["finished"] = True

    def init(project, config):
        logged["config"] = config
        return Run()
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    spec = importlib.util.spec_from_file_location("wandb_logger", Path(__file__).parents[1] / "examples" / "wandb_logger.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, history = fit(data, epochs=1, callbacks=[module.WandbLogger()])
    assert logged["finished"] and logged["config"]["batch_size"] == 64
    assert logged["rows"] == [(r["epoch"], {**r, "lr": 1e-3}) for r in history]
    assert not any(isinstance(v, float) and math.isnan(v) for _, row in logged["rows"] for v in row.values())


# -- The command line ----------------------------------------------------------------------------------------

@needs_tensorboard
def test_train_tensorboard_writes_the_run_folders_history_and_config_and_resumes(data, tmp_path, monkeypatch):
    from test_cli_eval import fake_load  # data.load serving a subset
    monkeypatch.setattr(funcvae.data, "load", fake_load({"train": data[0], "test": data[1]}, []))
    tiny = ["--quiet", "--no-compile", "--hidden", "8", "--latent", "2", "--batch-size", "64", "--tensorboard"]
    assert funcvae.cli.main(["train", "--out", str(tmp_path), "--epochs", "1", *tiny]) == 0
    (run_dir,) = tmp_path.iterdir()
    assert funcvae.cli.main(["train", "--resume", str(run_dir), "--epochs", "2", "--quiet", "--tensorboard"]) == 0
    history = funcvae.cli.folder.read_history(run_dir / "history.jsonl")
    found = events(run_dir / "tensorboard")
    assert scalars(found, "val_loss") == [(r["epoch"], float(np.float32(r["val_loss"]))) for r in history]
    assert [e.step for e in found.Images("reconstructions")] == [1, 2]
    shown = session_hparams(found)
    assert shown["dataset"] == "fashion-mnist" and shown["fit/batch_size"] == 64 and shown["model/hidden"] == "[8]"


def test_train_tensorboard_without_the_package_is_a_usage_error(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(SystemExit) as caught:
        funcvae.cli.main(["train", "--out", str(tmp_path), "--tensorboard"])
    assert caught.value.code == 2 and "pip install 'funcvae[tensorboard]'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
