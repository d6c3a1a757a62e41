"""eval's disentanglement section: the generative factors of a run's data (the shapes set's own, or a user's
file given with ``eval --factors``), every score of ``funcvae.disentanglement`` on them, and a label for each
latent dim (the factor it is most informative about) for the traversal."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import funcvae
from funcvae import disentanglement
from funcvae.cli import own_data
from funcvae.cli.folder import RunError

#: eval's sizes: rows behind MIG, SAP and DCI (``n``), and the FactorVAE and beta-VAE scores' training and
#: evaluation votes. The default takes seconds on two cores; ``--full`` takes disentanglement_lib's.
QUICK = dict(n=3000, train=2000, eval=1000)
FULL = dict(n=10000, train=10000, eval=5000)
#: The label of a latent dim that holds no factor's information beyond the estimator's bias.
NO_FACTOR = "none"


def help_text() -> str:
    return ("the generative factors of the run's held-out images, one row per image in their order: a .npy of "
            "(N, K) integers, or a .npz of (N,) integer arrays named by their factors; eval then reports the "
            "disentanglement scores (a shapes run has its own: default none)")


def of_run(config: dict, held_out, path: str | None):
    """The images, factors, factor names, pixel scale and a description of the data a run's disentanglement is
    scored on, or None when it has no factors: a shapes run's whole factor grid (``funcvae.data.shapes("all")``
    at the size it trained at), or the run's held-out images (all of them, before ``--n``) with ``path``'s
    factors. ``held_out()`` gives those images, read only when needed."""
    if path is not None:
        x, split = held_out()
        factors = read(path, rows=len(x))
        try:
            disentanglement.factor_table(factors, rows=len(x), factor_count=2)
        except (TypeError, ValueError) as e:
            raise RunError(f"--factors {path}: {e}") from None
        where = f"the {len(x):,} held-out images ({split}) with the factors of {path}"
        return x, factors, None, own_data.scale(x), where
    if config["dataset"] == "shapes" and config.get("data") is None:
        x, y = funcvae.data.shapes("all", **funcvae.data.SHAPES_LOADED)
        where = f"the shapes set's whole factor grid ({len(x):,} images, train and test)"
        return x, y, funcvae.sprites.FACTOR_NAMES, 255, where
    return None


def read(path: str | Path, *, rows: int):
    """Factors from ``path``: a .npy of (N, K) integers, or a .npz whose (N,) integer arrays are the factors by
    name (a dict, as ``funcvae.disentanglement`` takes it), with ``rows`` rows.

    Raises:
      RunError: no such file, another format, or the wrong number of rows (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"--factors {path}: no such file")
    try:
        got = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise RunError(f"--factors {path}: not a .npy or .npz file numpy reads ({e})") from None
    if isinstance(got, np.lib.npyio.NpzFile):
        with got:
            factors = {k: got[k] for k in got.files}
    else:
        factors = got
    shapes = [np.shape(v) for v in factors.values()] if isinstance(factors, dict) else [np.shape(factors)]
    if not shapes or any(len(shape) == 0 or shape[0] != rows for shape in shapes):
        raise RunError(f"--factors {path} holds arrays of shapes {shapes} for the run's {rows} held-out images; give "
                       "one row per image, in their order")
    return factors


def score(params: funcvae.Params, data: tuple, *, seed: int, full: bool) -> dict:
    """Every score of ``funcvae.disentanglement.scores`` on ``of_run``'s data (QUICK's or FULL's sizes, no more
    rows than the data has), plus the factor each latent dim is most informative about (``"dims"``, a name or
    NO_FACTOR), the sizes, the data's description and the seconds taken.

    Raises:
      RunError: the factors do not suit the scores (the message of ``funcvae.disentanglement``'s checks).
    """
    images, factors, names, scale, where = data
    sizes = dict(FULL if full else QUICK)
    sizes["n"] = min(sizes["n"], len(images))
    began = time.perf_counter()
    try:
        out = disentanglement.scores(params, images, factors, seed=seed, scale=scale, names=names, **sizes)
    except (TypeError, ValueError) as e:
        raise RunError(f"disentanglement: {e}") from None
    y, _ = disentanglement.factor_table(factors, names, rows=len(images), factor_count=2)
    bias = disentanglement.plugin_bias(max(len(np.unique(column)) for column in y.T), sizes["n"])
    info = out["mig"]["mutual_information"]
    dims = [NO_FACTOR if k < 0 else out["factors"][k] for k in disentanglement.most_informative(info, minimum=bias)]
    return {**out, "dims": dims, "sizes": sizes, "data": where, "seconds": time.perf_counter() - began}


def format_table(result: dict) -> str:
    """eval's disentanglement section: each score with what it is, the MIG per factor, each dim's factor."""
    s = result["sizes"]
    dci = result["dci"]
    rows = [("MIG", result["mig"]["mig"], "mutual information gap, mean over factors; Chen et al. 2018"),
            ("SAP", result["sap"]["sap"], "separated attribute predictability; Kumar et al. 2018"),
            ("DCI disentanglement", dci["disentanglement"],
             "gradient-boosted trees' importances; Eastwood & Williams 2018"),
            ("DCI completeness", dci["completeness"], ""),
            ("DCI informativeness", dci["informativeness_test"], "the trees' held-out accuracy, mean over factors"),
            ("FactorVAE score", result["factor_vae"]["score"], "majority-vote accuracy; Kim & Mnih 2018"),
            ("beta-VAE score", result["beta_vae"]["score"], "linear classifier's accuracy; Higgins et al. 2017")]
    width = max(len(name) for name, *_ in rows)
    lines = [f"disentanglement: {', '.join(result['factors'])} of {result['data']}; codes are posterior "
             f"{'means' if result['kind'] == 'mean' else 'samples'}; MIG, SAP and DCI on {s['n']:,} of the images, "
             f"the FactorVAE and beta-VAE scores on {s['train']:,} + {s['eval']:,} votes "
             f"({result['seconds']:.1f} s; scores 0 to 1, higher is better)"]
    lines += [f"{name.ljust(width)} | {value:.3f}" + (f"  ({note})" if note else "") for name, value, note in rows]
    lines.append("MIG per factor: " + ", ".join(f"{f} {v:.3f}" for f, v in zip(result["factors"],
                                                                                result["mig"]["per_factor"])))
    lines.append("each latent dim's most informative factor: " + " ".join(
        f"{d}:{name}" for d, name in enumerate(result["dims"])))
    return "\n".join(lines)

