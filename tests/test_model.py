"""Models and Params: the built-in models' trees, a user's own model through the whole public API, the
registration of Params as a pytree, and the checks that catch a broken model before any work."""

import math

import optree
import pytest
import torch

import funcvae
from funcvae import nn
from funcvae.contract import check_params, structure
from funcvae.models import ModelSpec

Z = 5.0
ARCHITECTURES = {
    "mlp": dict(),
    "mlp-deep": dict(hidden=(256, 128), latent=8, activation="gelu"),
    "conv": dict(arch="conv"),
    "conv-gaussian": dict(arch="conv", channels=(8, 16, 32), input_shape=(3, 32, 32), hidden=(), likelihood="gaussian"),
}


def test_default_is_the_classic_784_400_20_mlp():
    params = funcvae.init(seed=0)
    shapes = {path: tuple(t.shape) for path, t in funcvae.leaves_by_path(params).items()}
    assert shapes["encoder/hidden_0/kernel"] == (400, 784)
    assert shapes["encoder/mean/kernel"] == shapes["encoder/logvar/kernel"] == (20, 400)
    assert shapes["decoder/hidden_0/kernel"] == (400, 20)
    assert shapes["decoder/out/kernel"] == (784, 400)
    # 784*400+400 + 2*(400*20+20) + 20*400+400 + 400*784+784, as in the nn.Module VAE.
    assert sum(math.prod(s) for s in shapes.values()) == 652_824
    assert all(t.dtype == torch.float32 for t in optree.tree_leaves(params.tree))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_init_is_determined_by_the_seed(arch):
    a = funcvae.leaves_by_path(funcvae.init(seed=3, **ARCHITECTURES[arch]))
    b = funcvae.leaves_by_path(funcvae.init(seed=3, **ARCHITECTURES[arch]))
    c = funcvae.leaves_by_path(funcvae.init(seed=4, **ARCHITECTURES[arch]))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder/mean/kernel"], c["encoder/mean/kernel"])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_init_output_passes_its_own_checks(arch):
    params = funcvae.init(seed=0, **ARCHITECTURES[arch])
    check_params(params)
    assert ("decoder/obs_logvar" in funcvae.leaves_by_path(params)) == (params.model.spec.likelihood == "gaussian")


def _reference_init(spec: ModelSpec) -> dict:
    """The built-in models' initial tree as it was drawn before models were open: one generator for the
    seed's "init" stream, layers drawn in the order encoder (convolutions, hidden, mean, logvar), decoder
    (hidden, then out, or project and transposed convolutions), by ``funcvae.nn`` directly."""
    gen = funcvae.rng.generator(0, "init")
    enc, dec = {}, {}
    width = spec.features
    if spec.arch == "conv":
        c_in = spec.input_shape[0]
        for i, c_out in enumerate(spec.channels):
            enc[f"conv_{i}"] = nn.conv_init(gen, c_in, c_out, 4)
            c_in = c_out
        n = len(spec.channels)
        width = c_in * (spec.input_shape[1] >> n) * (spec.input_shape[2] >> n)
    for i, h in enumerate(spec.hidden):
        enc[f"hidden_{i}"] = nn.dense_init(gen, width, h)
        width = h
    enc["mean"] = nn.dense_init(gen, width, spec.latent)
    enc["logvar"] = nn.dense_init(gen, width, spec.latent)
    width = spec.latent
    for i, h in enumerate(reversed(spec.hidden)):
        dec[f"hidden_{i}"] = nn.dense_init(gen, width, h)
        width = h
    if spec.arch == "conv":
        n = len(spec.channels)
        dec["project"] = nn.dense_init(gen, width, spec.channels[-1] * (spec.input_shape[1] >> n)
                                       * (spec.input_shape[2] >> n))
        c_in = spec.channels[-1]
        for i, c_out in enumerate(list(reversed(spec.channels[:-1])) + [spec.input_shape[0]]):
            dec[f"deconv_{i}"] = nn.conv_transpose_init(gen, c_in, c_out, 4)
            c_in = c_out
    else:
        dec["out"] = nn.dense_init(gen, width, spec.features)
    if spec.likelihood == "gaussian" and spec.obs_std is None:
        dec["obs_logvar"] = torch.zeros(spec.features)
    return {"encoder": enc, "decoder": dec}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_built_in_models_draw_the_same_params_as_before_models_were_open(arch):
    params = funcvae.init(seed=0, **ARCHITECTURES[arch])
    want = funcvae.leaves_by_path(funcvae.Params(params.model, _reference_init(params.model.spec)))
    got = funcvae.leaves_by_path(params)
    assert got.keys() == want.keys()
    for path, t in want.items():
        assert torch.equal(got[path], t), path


def test_kernels_follow_the_torch_nn_default_distribution():
    kernel = funcvae.init(seed=0).tree["encoder"]["hidden_0"]["kernel"]  # U(-b, b), b = 1/sqrt(784)
    b, n = 1 / math.sqrt(784), kernel.numel()
    assert float(kernel.abs().max()) <= b
    # Mean 0 and variance b^2/3; Var(u^2) = 4 b^4 / 45. Bounds: 5 standard errors.
    assert abs(float(kernel.mean())) <= 5 * math.sqrt(b**2 / 3 / n)
    assert abs(float((kernel**2).mean()) - b**2 / 3) <= 5 * math.sqrt(4 * b**4 / 45 / n)
    linear = torch.nn.Linear(784, 400)
    assert float(linear.weight.detach().abs().max()) <= b  # the same bound as torch's own layer


def test_params_are_an_optree_node_that_keeps_the_model():
    params = funcvae.init(seed=0, hidden=(8,), latent=2)
    doubled = optree.tree_map(lambda t: 2 * t, params, namespace="funcvae")
    assert isinstance(doubled, funcvae.Params) and doubled.model is params.model
    torch.testing.assert_close(doubled.tree["decoder"]["out"]["bias"], 2 * params.tree["decoder"]["out"]["bias"])
    paths = optree.tree_paths(params, namespace="funcvae")
    assert ("tree", "encoder", "mean", "kernel") in paths


def test_torch_func_transforms_take_params_directly():
    params = funcvae.init(seed=0, hidden=(8,), latent=2)
    grads = torch.func.grad(lambda p: p.tree["encoder"]["mean"]["bias"].sum())(params)
    assert isinstance(grads, funcvae.Params) and grads.model is params.model
    assert torch.equal(grads.tree["encoder"]["mean"]["bias"], torch.ones(2))
    assert torch.equal(grads.tree["decoder"]["out"]["kernel"], torch.zeros(784, 8))


@pytest.mark.parametrize("fields, match", [
    (dict(arch="rnn"), "arch"),
    (dict(likelihood="poisson"), "likelihood"),
    (dict(activation="swishy"), "activation"),
    (dict(arch="conv", input_shape=(1, 30, 30)), "divisible"),
    (dict(obs_std=0.1), "gaussian"),
    (dict(likelihood="gaussian", obs_std=0.0), "obs_std"),
    (dict(latent=0), ">= 1"),
    (dict(prior="mixture"), "prior"),
    (dict(prior="vamp", pseudo_inputs=0), "pseudo_inputs"),
])
def test_bad_specs_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        ModelSpec(**fields)


def test_built_in_models_are_ordinary_models_made_once_per_spec():
    assert funcvae.ModelSpec is ModelSpec
    model = funcvae.models.mlp(hidden=(32,))
    assert isinstance(model, funcvae.Model) and model is funcvae.models.mlp(hidden=(32,))
    assert model == funcvae.models.mlp(hidden=(32,)) and hash(model) == hash(funcvae.models.mlp(hidden=(32,)))
    assert model.spec == ModelSpec(hidden=(32,)) and model != funcvae.models.mlp(hidden=(16,))
    params = funcvae.init(seed=0, hidden=(32,))
    assert params.model is model
    a, b = funcvae.leaves_by_path(params), funcvae.leaves_by_path(model.init(0))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert funcvae.init(seed=0, arch="conv").model is funcvae.models.conv()


# A user's own model ---------------------------------------------------------------------------------------


def _tiny_functions(hidden=8, latent=2):
    def init(gen):
        return {"enc": nn.dense_init(gen, 784, hidden), "mean": nn.dense_init(gen, hidden, latent),
                "logvar": nn.dense_init(gen, hidden, latent), "dec": nn.dense_init(gen, latent, 784)}

    def encode(tree, x):
        h = torch.tanh(nn.dense(tree["enc"], x))
        return nn.dense(tree["mean"], h), nn.dense(tree["logvar"], h)

    def decode(tree, z):
        return nn.dense(tree["dec"], z)

    return init, encode, decode


def test_equal_models_hash_equal():
    init, encode, decode = _tiny_functions()
    a = funcvae.Model(init=init, encode=encode, decode=decode, likelihood="bernoulli", input_shape=(1, 28, 28),
                      latent=2)
    b = funcvae.Model(init=init, encode=encode, decode=decode, likelihood=funcvae.likelihoods.bernoulli(),
                      input_shape=[1, 28, 28], latent=2)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != funcvae.Model(init=init, encode=encode, decode=decode, likelihood="bernoulli", latent=2,
                              prior="vamp")
    with pytest.raises(AttributeError, match="frozen"):
        a.latent = 3


def test_the_user_model_contract(fashion, tmp_path):
    train, test = fashion
    x_train, x_test = train[:512], test[:256]

    def init(gen):
        return {"enc": nn.dense_init(gen, 784, 256), "mean": nn.dense_init(gen, 256, 32),
                "logvar": nn.dense_init(gen, 256, 32), "dec": nn.dense_init(gen, 32, 256),
                "out": nn.dense_init(gen, 256, 784)}

    def encode(tree, x):
        h = torch.tanh(nn.dense(tree["enc"], x))
        return nn.dense(tree["mean"], h), nn.dense(tree["logvar"], h)

    def decode(tree, z):
        return nn.dense(tree["out"], torch.tanh(nn.dense(tree["dec"], z)))

    model = funcvae.Model(init=init, encode=encode, decode=decode, likelihood="bernoulli",
                          input_shape=(1, 28, 28), latent=32)
    params = model.init(seed=0)
    assert params.model is model and model.spec is None and model.features == 784
    before = funcvae.elbo(params, x_test, seed=1)["loss"]
    params, history = funcvae.fit(params, x_train, epochs=1, val_data=x_test, objective=funcvae.objectives.iwae(k=5),
                                  optimizer=funcvae.optim.chain(funcvae.optim.clip_by_global_norm(10.0),
                                                                funcvae.optim.adam(1e-3)), compile=False)
    assert params.model is model and len(history) == 1
    assert history[0]["beta"] is None and all(math.isfinite(history[0][k]) for k in ("loss", "val_loss"))
    # IWAE training: recon + kl is the k-sample ELBO, below the k-sample bound on average.
    assert history[0]["recon"] + history[0]["kl"] >= history[0]["loss"]

    terms = funcvae.elbo(params, x_test, seed=1)
    assert all(terms[k].shape == (256,) for k in ("recon", "kl", "loss"))
    torch.testing.assert_close(terms["loss"], terms["recon"] + terms["kl"])
    drop = before - terms["loss"]  # paired per example: one epoch of training lowers the held-out loss
    assert float(drop.mean()) > Z * float(drop.std() / math.sqrt(len(drop)))
    bound = funcvae.iwae(params, x_test[:20], k=50, seed=2)
    assert bound.shape == (20,) and bool(torch.isfinite(bound).all())
    elbo_20 = -terms["loss"][:20]
    assert float(bound.mean()) >= float(elbo_20.mean()) - Z * float(elbo_20.std() / math.sqrt(20))

    path = tmp_path / "run" / "params.safetensors"
    path.parent.mkdir()
    funcvae.save_params(path, params)
    loaded = funcvae.load_params(path, model=model)
    assert loaded.model is model
    want, got = funcvae.leaves_by_path(params), funcvae.leaves_by_path(loaded)
    assert want.keys() == got.keys()
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match=r"model="):
        funcvae.load_params(path)

    def renamed_init(gen):
        tree = init(gen)
        tree["encoder"] = tree.pop("enc")
        return tree

    renamed = funcvae.Model(init=renamed_init, encode=lambda t, x: encode({**t, "enc": t["encoder"]}, x),
                            decode=decode, likelihood="bernoulli", input_shape=(1, 28, 28), latent=32)
    with pytest.raises(ValueError, match=r"missing \['encoder/bias', 'encoder/kernel'\], "
                                         r"unexpected \['enc/bias', 'enc/kernel'\]"):
        funcvae.load_params(path, model=renamed)

    def narrow_init(gen):
        return {**init(gen), "enc": nn.dense_init(gen, 784, 128), "mean": nn.dense_init(gen, 128, 32),
                "logvar": nn.dense_init(gen, 128, 32)}

    narrow = funcvae.Model(init=narrow_init, encode=encode, decode=decode, likelihood="bernoulli",
                           input_shape=(1, 28, 28), latent=32)
    with pytest.raises(ValueError, match=r"param enc/bias has shape \(256,\), expected \(128,\)"):
        funcvae.load_params(path, model=narrow)


# A broken model is refused before any work --------------------------------------------------------------


def _counted(fn, calls, name):
    def wrapped(*args):
        calls[name] = calls.get(name, 0) + 1
        return fn(*args)
    return wrapped


@pytest.mark.parametrize("broken, likelihood, match", [
    ("encode-mean-shape", "bernoulli",
     r"encode returned a mean of shape \(3,\) for one example of shape \(784,\); expected \(2,\) \(latent=2\)"),
    ("encode-logvar-shape", "bernoulli", r"encode returned a logvar of shape \(2, 1\)"),
    ("encode-one-tensor", "bernoulli", r"encode must return \(mean, logvar\), got a tensor"),
    ("decode-pair-for-bernoulli", "bernoulli",
     r"decode must return one tensor of shape \(784,\) for the .*ernoulli.* likelihood, got a tuple of 2"),
    ("decode-wrong-features", "bernoulli", r"decode must return one tensor of shape \(784,\) .*\(783,\)"),
    ("decode-one-tensor-for-learned-gaussian", "gaussian",
     r"decode must return \(mean, logvar\), each of shape \(784,\) for the .*aussian.* likelihood, got a tensor"),
])
def test_encode_and_decode_of_the_wrong_shape_are_refused_before_any_work(broken, likelihood, match, tmp_path):
    init, encode, decode = _tiny_functions()
    fns = {
        "encode-mean-shape": dict(encode=lambda t, x: (torch.cat([encode(t, x)[0], x[:1]]), encode(t, x)[1])),
        "encode-logvar-shape": dict(encode=lambda t, x: (encode(t, x)[0], encode(t, x)[1][:, None])),
        "encode-one-tensor": dict(encode=lambda t, x: encode(t, x)[0]),
        "decode-pair-for-bernoulli": dict(decode=lambda t, z: (decode(t, z), decode(t, z))),
        "decode-wrong-features": dict(decode=lambda t, z: decode(t, z)[:-1]),
        "decode-one-tensor-for-learned-gaussian": dict(),
    }[broken]
    calls = {}
    model = funcvae.Model(init=init, encode=_counted(fns.get("encode", encode), calls, "encode"),
                          decode=_counted(fns.get("decode", decode), calls, "decode"), likelihood=likelihood,
                          latent=2)
    params = model.init(seed=0)
    x = torch.rand(8, 784, generator=torch.Generator().manual_seed(0))
    for entry in (lambda: funcvae.fit(params, x, epochs=1, batch_size=4, compile=False),
                  lambda: funcvae.elbo(params, x, seed=0), lambda: funcvae.iwae(params, x, k=2, seed=0),
                  lambda: funcvae.encode(params, x), lambda: funcvae.save_params(tmp_path / "params.safetensors", params)):
        calls.clear()
        with pytest.raises(ValueError, match=match):
            entry()
        # The check ran the model on ONE example and stopped there: no batch was ever encoded or decoded.
        assert calls.get("encode", 0) <= 1 and calls.get("decode", 0) <= 1, calls
    with pytest.raises(ValueError, match=match):
        structure(model)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("leaf, what", [
    (0.5, "a float"),
    (torch.zeros(3, dtype=torch.int64), r"a tensor of shape \(3,\) and dtype torch.int64"),
    (None, "a NoneType"),
])
def test_init_with_a_leaf_that_is_not_a_float_tensor_is_refused(leaf, what):
    init, encode, decode = _tiny_functions()
    model = funcvae.Model(init=lambda gen: {**init(gen), "settings": {"scale": leaf}}, encode=encode, decode=decode,
                          latent=2)
    with pytest.raises(TypeError, match=rf"init\(generator\) returned {what} at settings/scale; every leaf must be "
                                        r"a floating-point tensor"):
        model.init(seed=0)


def test_init_that_is_not_a_dict_is_refused():
    init, encode, decode = _tiny_functions()
    model = funcvae.Model(init=lambda gen: [init(gen)], encode=encode, decode=decode, latent=2)
    with pytest.raises(TypeError, match=r"init\(generator\) must return a non-empty dict of tensors, got a list"):
        model.init(seed=0)


def test_a_user_prior_entry_clashes_with_the_vamp_prior():
    init, encode, decode = _tiny_functions()
    with_prior = lambda gen: {**init(gen), "prior": {"scale": torch.ones(2)}}  # noqa: E731
    # With N(0, I) the name is the user's to take ...
    plain = funcvae.Model(init=with_prior, encode=encode, decode=decode, latent=2)
    assert "prior/scale" in funcvae.leaves_by_path(plain.init(seed=0))
    # ... with the VampPrior it is where the pseudo-inputs live.
    vamp = funcvae.Model(init=with_prior, encode=encode, decode=decode, latent=2, prior=funcvae.priors.vamp(4))
    with pytest.raises(ValueError, match=r"init returned a top-level 'prior' entry, which the .*amp.* keeps its own "
                                         r"parameters in; rename it"):
        vamp.init(seed=0)
    fine = funcvae.Model(init=init, encode=encode, decode=decode, latent=2, prior=funcvae.priors.vamp(4))
    assert funcvae.leaves_by_path(fine.init(seed=0))["prior/pseudo_inputs"].shape == (4, 784)


@pytest.mark.parametrize("fields, error, match", [
    (dict(init=None), TypeError, "Model's init must be a function, got NoneType"),
    (dict(encode="encoder"), TypeError, "Model's encode must be a function, got str"),
    (dict(input_shape=(28, 28)), ValueError, r"input_shape must be \(channels, height, width\)"),
    (dict(input_shape=(1, 0, 28)), ValueError, r"input_shape must be \(channels, height, width\) of ints >= 1"),
    (dict(latent=0), ValueError, "latent must be an int >= 1 or a non-empty dict of them .latent groups., got 0"),
    (dict(latent=2.0), ValueError, "latent must be an int >= 1 or a non-empty dict of them .latent groups., got 2.0"),
    (dict(likelihood="poisson"), ValueError, "likelihood must be 'bernoulli', 'gaussian'"),
    (dict(prior="laplace"), ValueError, "prior must be 'normal', 'vamp'"),
])
def test_bad_model_settings_are_refused_when_the_model_is_made(fields, error, match):
    init, encode, decode = _tiny_functions()
    with pytest.raises(error, match=match):
        funcvae.Model(**{"init": init, "encode": encode, "decode": decode, "latent": 2, **fields})
