"""The machinery a run needs that is not VAE maths: which BLAS multiplies (``gemm``), how many CPU threads
the steps use (``threads``), compiling a step (``compiling``), data parallelism (``distributed``), one
writer per folder (``lock``), signals at step boundaries (``interrupt``), strict JSON records
(``records``) and files written whole and checksummed (``files``). Private: import the names ``funcvae``
exports."""
