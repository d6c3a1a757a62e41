"""Sample quality: are a VAE's samples realistic and diverse? Scored on the features of a small classifier
trained on the domain's own images (Fashion-MNIST's ships with funcvae; MNIST's is trained on first use), not
an ImageNet network, whose features are biased on data unlike ImageNet (Kynkäänniemi et al. 2023).

    quality.features(x)                 # (N, 128) domain features of images in [0, 1]
    quality.fid(x_a, x_b)               # Fréchet distance between two image sets
    quality.assess(samples, x_test, reconstructions=recon, train=x_train)  # scores and verdicts of image sets
    quality.sample_quality(params, x_test, x_train=x_train)  # a model's prior samples, reconstructions, real floor

``metrics`` holds the metrics as pure functions of feature matrices (FID, KID, precision/recall,
density/coverage, class coverage, true class shares, duplicates); ``network`` the classifier; ``samples`` the
scoring; ``rules`` the verdicts and their thresholds.
"""

from funcvae.quality import metrics, network, rules
from funcvae.quality.rules import SETS, verdicts
from funcvae.quality.samples import assess, embed, features, fid, sample_quality, scores

__all__ = ["SETS", "assess", "embed", "features", "fid", "metrics", "network", "rules", "sample_quality", "scores",
           "verdicts"]
