"""The rooms of ``funcvae.fit``: the epoch loop (``loop``), the run folder (``folder``: lock, resume, data
fingerprint), the compiled runner (``runner``, the data-parallel one included) and the non-finite watch
(``watch``)."""
