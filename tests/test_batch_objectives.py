"""Objectives whose loss needs the whole batch: beta-TCVAE's decomposition of the KL (MWS and MSS estimates of
q(z)) and InfoVAE's MMD; their batch stage in the step, fit, stacks, resume and the command line; what they
refuse."""

import json
import math
import signal

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.func import vmap

import funcvae
import funcvae.cli
from funcvae import aggregate, objectives as O, optim, shorthand
from funcvae import distributions as D
from funcvae._runtime.distributed import World
from funcvae._train.runner import make_runner
from funcvae.step import make_train_step

SMALL = dict(hidden=(8,), input_shape=(1, 4, 4))
#: Each batch objective, built from its weight (beta, or the MMD's).
OBJECTIVES = {"mws": lambda beta=2.0: O.beta_tcvae(beta, 50),
              "mss": lambda beta=2.0: O.beta_tcvae(beta, 50, stratified=True),
              "mmd": lambda weight=10.0: O.mmd(weight), "mmd-imq": lambda weight=10.0: O.mmd(weight, kernel="imq")}


def model(latent: int = 3, dtype=torch.float64, seed: int = 0, **fields):
    return funcvae.init(seed=seed, latent=latent, dtype=dtype, **{**SMALL, **fields})


def batch(params, objective, x, eps, weights):
    """The batch stage's terms of ``objective`` and its reduced loss for one batch."""
    numbers = objective.schedule(objective.init(), torch.tensor(0), x.dtype)
    terms = objective.batch(O.batch_terms(params, x, eps, numbers, objective), weights, weights.sum(), numbers)
    return terms, objective.reduce(terms, weights, weights.sum(), numbers)


def draws(rows: int, latent: int, samples: int = 1, seed: int = 0, identical: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1 if identical else rows, 16, generator=g, dtype=torch.float64).expand(rows, 16)
    return x, torch.randn(rows, samples, latent, generator=g, dtype=torch.float64)


def mc_kl(params, x, eps):
    """log q(z | x) - log p(z) at z = mean + std * eps[:, 0], (B,), from the encoder directly."""
    mean, logvar = vmap(params.model.encode_one, in_dims=(None, 0))(params.tree, x)
    z = D.reparameterize(mean, logvar, eps[:, 0])
    return D.gaussian_log_prob(mean, logvar, z).sum(-1) - D.standard_normal_log_prob(z).sum(-1)


# -- beta-TCVAE's decomposition -----------------------------------------------------------------------------

@settings(max_examples=8)
@given(rows=st.integers(1, 6), latent=st.integers(1, 4), stratified=st.booleans(), n=st.integers(6, 1000),
       beta=st.floats(0, 8))
def test_the_three_terms_sum_to_the_monte_carlo_kl_and_beta_weighs_the_total_correlation(rows, latent, stratified,
                                                                                          n, beta):
    params = model(latent)
    x, eps = draws(rows, latent)
    objective = O.beta_tcvae(beta, n, stratified=stratified)
    terms, _ = batch(params, objective, x, eps, torch.ones(rows, dtype=torch.float64))
    kl = mc_kl(params, x, eps)
    torch.testing.assert_close(terms["mi"] + terms["tc"] + terms["dwkl"], kl, rtol=0, atol=1e-10)
    torch.testing.assert_close(terms["loss"], terms["recon"] + kl + (beta - 1) * terms["tc"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("stratified", [False, True])
def test_at_beta_1_the_loss_is_the_elbo_with_a_monte_carlo_kl_of_the_same_draws(stratified):
    params = model(3)
    x, eps = draws(5, 3)
    ones = torch.ones(5, dtype=torch.float64)
    terms, _ = batch(params, O.beta_tcvae(1.0, 50, stratified=stratified), x, eps, ones)
    elbo = O.batch_terms(params, x, eps, {"beta": torch.tensor(1.0, dtype=torch.float64)}, O.elbo(kl="mc"))
    torch.testing.assert_close(terms["loss"], elbo["loss"], rtol=0, atol=1e-10)
    torch.testing.assert_close(terms["kl"], O.batch_terms(params, x, eps, {"beta": 1.0}, O.elbo())["kl"])  # analytic
    grads, (got, _) = O.loss_and_grad(params, x, eps, O.beta_tcvae(1.0, 50, stratified=stratified))
    assert got == pytest.approx(float(elbo["loss"].mean()), abs=1e-10)
    want, _ = O.loss_and_grad(params, x, eps, O.elbo(kl="mc"))
    for path, g in funcvae.leaves_by_path(want).items():
        torch.testing.assert_close(funcvae.leaves_by_path(grads)[path], g, msg=path)


@settings(max_examples=10)
@given(rows=st.integers(1, 7), padding=st.integers(0, 3), extra=st.integers(0, 500))
def test_mss_weights_sum_to_1_and_mws_weights_to_1_over_n(rows, padding, extra):
    weights = torch.cat([torch.ones(rows), torch.zeros(padding)]).to(torch.float64)
    n = torch.tensor(float(rows + extra), dtype=torch.float64)
    mss, mws = aggregate.log_weights(weights, n, stratified=True), aggregate.log_weights(weights, n)
    one = -math.log(n) if rows == 1 else 0.0  # a batch of one real row has no other stratum: MSS is MWS
    torch.testing.assert_close(torch.logsumexp(mss[:rows], 1), torch.full((rows,), one, dtype=torch.float64))
    torch.testing.assert_close(torch.logsumexp(mws[:rows], 1), torch.full((rows,), -math.log(n), dtype=torch.float64))
    assert torch.isneginf(mss[:, rows:]).all() and torch.isneginf(mws[:, rows:]).all()  # padding is no member
    if rows > 1:  # MSS: itself 1/N, one other (N - M + 1) / (N (M - 1)), the M - 2 others 1 / (M - 1)
        w = mss[:rows, :rows].exp()
        assert torch.allclose(w.diagonal(), 1 / n)
        others = w[~torch.eye(rows, dtype=torch.bool)].view(rows, rows - 1).sort(1).values
        assert torch.allclose(others[:, 0], (n - rows + 1) / (n * (rows - 1)))
        assert torch.allclose(others[:, 1:], torch.full_like(others[:, 1:], 1 / (rows - 1)))


@pytest.mark.parametrize("stratified, offset", [(True, 0.0), (False, 1.0)])
def test_for_copies_of_one_example_mss_finds_no_information_and_mws_its_log_n_offsets(stratified, offset):
    # Every posterior is the same, so the aggregate posterior is it: MI = TC = 0 and the dimension-wise KL is the
    # KL. MSS's estimate is exact; MWS's, whose weights sum to 1/N, is log N low in each factor (the paper's).
    latent, n = 3, 200
    params = model(latent)
    x, eps = draws(6, latent, identical=True)
    terms, _ = batch(params, O.beta_tcvae(1.0, n, stratified=stratified), x, eps, torch.ones(6, dtype=torch.float64))
    log_n = offset * math.log(n)
    torch.testing.assert_close(terms["mi"], torch.full_like(terms["mi"], log_n))
    torch.testing.assert_close(terms["tc"], torch.full_like(terms["tc"], (latent - 1) * log_n))
    torch.testing.assert_close(terms["dwkl"], mc_kl(params, x, eps) - latent * log_n)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_padding_rows_change_nothing_of_the_real_rows(name):
    objective = OBJECTIVES[name]()
    params = model(3)
    x, eps = draws(7, 3, samples=objective.samples)
    anything = torch.rand(3, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    padded_x, padded_eps = torch.cat([x[:4], anything]), torch.cat([eps[:4], 3 * eps[4:]])
    weights = torch.tensor([1.0, 1, 1, 1, 0, 0, 0], dtype=torch.float64)
    alone, loss_alone = batch(params, objective, x[:4], eps[:4], torch.ones(4, dtype=torch.float64))
    padded, loss_padded = batch(params, objective, padded_x, padded_eps, weights)
    for key, value in alone.items():
        torch.testing.assert_close(padded[key][:4], value, rtol=1e-12, atol=1e-12, msg=key)
    torch.testing.assert_close(loss_padded, loss_alone, rtol=1e-12, atol=1e-12)


# -- MMD ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", aggregate.KERNELS)
def test_the_unbiased_mmd_is_0_in_expectation_for_one_distribution_and_positive_for_a_shift(kernel):
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(2, 400, 16, 3, generator=g, dtype=torch.float64)
    weights = torch.ones(16, dtype=torch.float64)
    same = vmap(lambda a, b: aggregate.mmd2(a, b, weights, kernel))(q, p)
    shifted = vmap(lambda a, b: aggregate.mmd2(a, b, weights, kernel))(q, p + 1.0)
    se = same.std() / math.sqrt(same.numel())
    assert abs(float(same.mean())) < 4 * float(se)
    assert float(shifted.mean()) > 10 * float(shifted.std() / math.sqrt(shifted.numel())) > 0
    assert float(aggregate.mmd2(q[0], p[0], torch.tensor([1.0] + [0.0] * 15, dtype=torch.float64), kernel)) == 0


@pytest.mark.parametrize("kernel", aggregate.KERNELS)
def test_the_mmd_term_is_the_docstrings_kernel_between_posterior_and_prior_draws(kernel):
    """By hand, pair by pair: InfoVAE's Gaussian exp(-|x - y|² / D²) or WAE's 2D / (2D + |x - y|²), between
    each real row's posterior draw and the prior draws of the second noise rows, as the name says."""
    latent, rows = 3, 4
    k = {"gaussian": lambda a, b: math.exp(-float(((a - b) ** 2).sum()) / latent ** 2),
         "imq": lambda a, b: 2 * latent / (2 * latent + float(((a - b) ** 2).sum()))}[kernel]
    objective = O.mmd(7.0, kernel=kernel)
    assert objective.name == f"mmd(weight=7.0, kernel={kernel!r})" and objective.samples == 2
    params = model(latent)
    x, eps = draws(rows + 1, latent, samples=2)
    terms, loss = batch(params, objective, x, eps, torch.tensor([1.0] * rows + [0.0], dtype=torch.float64))
    mean, logvar = vmap(params.model.encode_one, in_dims=(None, 0))(params.tree, x)
    q, p = D.reparameterize(mean, logvar, eps[:, 0]), eps[:, 1]
    pairs = [(i, j) for i in range(rows) for j in range(rows) if i != j]
    want = (sum(k(q[i], q[j]) + k(p[i], p[j]) for i, j in pairs) / len(pairs)
            - 2 * sum(k(q[i], p[j]) for i in range(rows) for j in range(rows)) / rows ** 2)
    assert terms["mmd"][:rows].tolist() == pytest.approx([want] * rows, rel=1e-12)
    torch.testing.assert_close(terms["loss"], terms["recon"] + 7.0 * terms["mmd"])
    torch.testing.assert_close(terms["kl"], D.kl_standard_normal(mean, logvar))  # the true KL, reported


# -- fit, stacks, resume ------------------------------------------------------------------------------------

def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 16, generator=g), torch.rand(12, 16, generator=g)


@pytest.mark.parametrize("name, reports, posterior", [("mss", O.TC_TERMS, "diagonal"), ("mmd", ("mmd",), "diagonal"),
                                                      ("mmd", ("mmd",), "iaf")])
def test_fit_records_what_a_batch_objective_reports(name, reports, posterior):
    x, x_val = data()
    params, history = funcvae.fit(model(2, torch.float32, posterior=posterior), x, val_data=x_val, epochs=1,
                                  batch_size=16, compile=False, progress=False, objective=OBJECTIVES[name]())
    (record,) = history
    assert all(math.isfinite(record[k]) for k in ("recon", "kl", "loss", *reports)), record
    assert record["val_loss"] == pytest.approx(record["val_recon"] + record["val_kl"])  # held out: the ELBO
    assert record["beta"] == (2.0 if name == "mss" else None)
    if name == "mss":  # 40 rows in batches of 16: the loss is its own, not recon + beta * kl
        assert record["loss"] == pytest.approx(record["recon"] + record["mi"] + 2.0 * record["tc"] + record["dwkl"],
                                               rel=1e-5)
    else:
        assert record["loss"] == pytest.approx(record["recon"] + 10.0 * record["mmd"], rel=1e-5)


@pytest.mark.parametrize("name", ["mws", "mmd"])
def test_a_stack_of_models_that_differ_in_beta_trains_like_each_alone(name):
    x, _ = data(40)
    starts = [model(2, torch.float32, seed=s) for s in range(2)]
    objectives, seeds = [OBJECTIVES[name](1.0), OBJECTIVES[name](4.0)], [3, 4]
    settings_ = dict(epochs=2, batch_size=16, compile=False, progress=False, lr=3e-3)
    stacked, histories = funcvae.fit(funcvae.stack(starts), x, seed=seeds, objective=objectives, **settings_)
    for start, objective, seed, got, history in zip(starts, objectives, seeds, funcvae.unstack(stacked), histories):
        want, alone = funcvae.fit(start, x, seed=seed, objective=objective, **settings_)
        for path, t in funcvae.leaves_by_path(want).items():
            torch.testing.assert_close(funcvae.leaves_by_path(got)[path], t, rtol=1e-4, atol=1e-5, msg=path)
        for a, b in zip(history, alone):
            for key in ("recon", "kl", "loss", *objective.reports):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key


class StopAt:
    """A callback that sends SIGINT to this process after step ``at``: fit stops at a step boundary, saved."""

    def __init__(self, at):
        self.at = at

    def step_end(self, step, metrics):
        if step == self.at:
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("name", ["mss", "mmd"])
def test_resume_mid_epoch_and_at_its_end_is_bit_identical(tmp_path, name):
    x, x_val = data(40)

    def run(folder, epochs, **kw):
        return funcvae.fit(model(2, torch.float32), x, val_data=x_val, epochs=epochs, batch_size=16, seed=5,
                           compile=False, progress=False, checkpoint_dir=tmp_path / folder,
                           objective=OBJECTIVES[name](), **kw)

    whole, h_whole = run("whole", 2)
    with pytest.raises(funcvae.Interrupted):
        run("stopped", 2, callbacks=[StopAt(4)], share_cores=False)
    state = funcvae.load(tmp_path / "stopped" / funcvae.CHECKPOINT_FILE)
    assert state.epoch == 1 and 0 < state.step < 3 and state.sums.shape == (1, 5 + len(OBJECTIVES[name]().reports))
    resumed, h_resumed = run("stopped", 2, resume=True)
    for path, t in funcvae.leaves_by_path(whole).items():
        assert torch.equal(funcvae.leaves_by_path(resumed)[path], t), path
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in h_resumed] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in h_whole]


# -- the command line ---------------------------------------------------------------------------------------

@pytest.fixture
def images(tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (48, 4, 4), dtype=np.uint8))
    return path


def train(tmp_path, images, *args):
    return funcvae.cli.main(["train", "--data", str(images), "--out", str(tmp_path / "runs"), "--quiet",
                             "--no-compile", "--hidden", "8", "--latent", "2", "--batch-size", "32", *map(str, args)])


@pytest.mark.parametrize("args, recorded, objective", [
    (["--objective", "beta-tcvae", "--beta", "6"], dict(objective="beta-tcvae", beta=6.0, kl_warmup=None),
     O.beta_tcvae(6.0, 48)),
    (["--objective", "mmd", "--mmd-weight", "10"], dict(objective="mmd", beta=None, mmd_weight=10.0), O.mmd(10.0)),
    (["--objective", "mmd"], dict(mmd_weight=1000.0), O.mmd()),
])
def test_the_command_line_records_the_objective_and_resume_rebuilds_it(tmp_path, capsys, images, args, recorded,
                                                                       objective):
    assert train(tmp_path / "straight", images, "--epochs", "2", *args) == 0
    assert train(tmp_path, images, "--epochs", "1", *args) == 0
    assert objective.name in capsys.readouterr().out  # the data's 48 examples are beta-tcvae's dataset size
    (run_dir,) = (tmp_path / "runs").iterdir()
    fit = json.loads((run_dir / "config.json").read_text())["fit"]
    assert {k: fit[k] for k in recorded} == recorded
    assert ("mmd_weight" in fit) == (objective.reports == ("mmd",))  # recorded for mmd only
    assert funcvae.cli.main(["train", "--resume", str(run_dir), "--epochs", "2", "--quiet", *args[2:]]) == 0
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(k in history[-1] for k in objective.reports)
    (straight,) = (tmp_path / "straight" / "runs").iterdir()
    a, b = (funcvae.leaves_by_path(funcvae.load_params(r / "params.safetensors")) for r in (straight, run_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args, complaint", [
    (["--mmd-weight", "10"], "--mmd-weight applies to --objective mmd only"),
    (["--objective", "mmd", "--beta", "2"], "--objective mmd has no KL weight to set"),
    (["--objective", "beta-tcvae", "--kl-warmup", "1"], "beta-tcvae has no KL warm-up"),
    (["--objective", "beta-tcvae", "--k", "3"], "--k (importance samples) applies to --objective iwae only"),
    (["--objective", "beta-tcvae", "--prior", "vamp", "--pseudo-inputs", "3"], "needs a model given by encode= and a "
                                                                               "factorised prior"),
    (["--objective", "mmd", "--prior", "vamp", "--pseudo-inputs", "3"], "needs the standard normal prior"),
    (["--objective", "beta-tcvae", "--free-bits", "0.1"], "need an ELBO"),
    (["--objective", "mmd", "--mmd-weight", "-1"], "weight must be a finite number >= 0"),
])
def test_bad_command_lines_are_usage_errors_before_any_work(tmp_path, capsys, images, args, complaint):
    with pytest.raises(SystemExit) as e:
        train(tmp_path, images, "--epochs", "1", *args)
    assert e.value.code == 2 and complaint in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_the_shorthand_builds_them_one_per_model_of_a_stack():
    tc = shorthand.build({"objective": "beta-tcvae", "beta": [1.0, 6.0]}, n_models=2, examples=60).objectives
    assert [o.name for o in tc] == [O.beta_tcvae(1.0, 60).name, O.beta_tcvae(6.0, 60).name]
    mmd = shorthand.build({"objective": "mmd", "mmd_weight": [10.0, 100.0]}, n_models=2).objectives
    assert [o.name for o in mmd] == [O.mmd(10.0).name, O.mmd(100.0).name]
    assert shorthand.build({"objective": "mmd"}).objectives[0].name == O.mmd(1000.0).name
    with pytest.raises(ValueError, match=r"'beta-tcvae' needs the training set's size: build\(..., examples=N\)"):
        shorthand.build({"objective": "beta-tcvae"})
    with pytest.raises(ValueError, match="'mmd' has no KL warm-up"):
        shorthand.build({"objective": "mmd", "kl_warmup": 1})


# -- what they refuse ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("build, fields, match", [
    (lambda: O.beta_tcvae(1.0, 10), dict(posterior="iaf"), "needs a model given by encode= and a factorised prior, "
                                                           "not a posterior given as a draw"),
    (lambda: O.beta_tcvae(1.0, 10), dict(prior="vamp", pseudo_inputs=3), "not the VampPrior"),
    (lambda: O.mmd(), dict(prior="vamp", pseudo_inputs=3), r"needs the standard normal prior \('normal'\)"),
])
def test_models_a_batch_objective_cannot_train_are_refused(build, fields, match):
    with pytest.raises(ValueError, match=match):
        make_train_step(model(2, torch.float32, **fields).model, build(), optim.adam(1e-3))


def test_bad_settings_and_uses_are_refused_with_clear_messages():
    with pytest.raises(ValueError, match="dataset_size must be an int >= 1, got 0"):
        O.beta_tcvae(1.0, 0)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        O.beta_tcvae(-1.0, 10)
    with pytest.raises(ValueError, match="kernel must be one of"):
        O.mmd(kernel="laplace")
    with pytest.raises(ValueError, match=r"need an ELBO \(objectives.elbo\), not beta_tcvae"):
        O.free_bits(O.beta_tcvae(1.0, 10), 0.1)
    x, _ = data(20)
    for objective in (O.beta_tcvae(1.0, 20), O.mmd()):
        assert not objective.separable
        with pytest.raises(ValueError, match="takes per-example gradients, which .* cannot give"):
            funcvae.fit(model(2, torch.float32), x, epochs=1, batch_size=8, compile=False, objective=objective,
                        optimizer=optim.chain(optim.differentially_private_aggregate(1.0, 0.0), optim.adam(1e-3)))
        step = make_train_step(model(2, torch.float32).model, objective, optim.adam(1e-3))
        with pytest.raises(ValueError, match="data-parallel fit needs a batch loss that is a mean over examples"):
            make_runner(step, compile=False, watching=True, world=World(0, 2), stack=False, per_example=False,
                        n_examples=20, batch_size=8, like=torch.zeros(()))
    assert O.elbo().separable and O.iwae(2).separable and not O.free_bits(O.elbo(), 0.1).separable
