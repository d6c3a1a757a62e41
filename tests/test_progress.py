"""Progress bars: drawn where asked (or on a terminal), never when silenced or on a process of rank above 0; fit's
bar shows the epoch's running loss and IWAE's counts examples."""

import io
import sys

import funcvae
from funcvae._runtime import progress


def test_a_bar_is_shown_where_asked_and_never_when_silenced_or_off_rank_0(monkeypatch):
    assert progress.shown(True) and not progress.shown(False)
    with progress.silenced():
        assert not progress.shown(True)
    assert progress.shown(True)
    monkeypatch.setenv("RANK", "1")
    assert not progress.shown(True)


def test_fit_shows_its_running_loss_and_iwae_its_examples(fashion, monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    params = funcvae.init(seed=0, hidden=(32,), latent=4)
    params, history = funcvae.fit(params, fashion[0][:1024], epochs=1, batch_size=8, compile=False, progress=True)
    funcvae.iwae(params, fashion[1][:40], k=10, seed=0, progress=True)
    text = err.getvalue()
    assert "epoch 1/1" in text and "loss=" in text
    assert "IWAE_10" in text and "/40 " in text
    err.truncate(0)
    funcvae.iwae(params, fashion[1][:40], k=10, seed=0, progress=False)
    with progress.silenced():
        funcvae.fit(params, fashion[0][:64], epochs=1, batch_size=8, compile=False, progress=True)
    assert err.getvalue().strip("\x00") == ""
