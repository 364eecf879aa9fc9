"""Linear-probe head initialisation (LP-FT, Kumar et al. 2022).

Fine-tuning from a random or zero head first spends its gradient on a head that knows nothing,
and the large early gradients distort the pretrained features. Fitting the linear head first on
frozen features (an L2-regularised logistic regression, convex and cheap) and only then
fine-tuning starts the network where a good feature-extraction model already is.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

log = logging.getLogger(__name__)


def final_linear(head: nn.Module) -> nn.Linear | None:
    """The head's output layer when the head is linear (dropout allowed), else None."""
    layers = [m for m in head.modules() if not isinstance(m, (nn.Sequential, nn.Dropout))]
    return layers[0] if len(layers) == 1 and isinstance(layers[0], nn.Linear) else None


def fit_probe(features: np.ndarray, labels: np.ndarray, n_classes: int, c: float = 0.1,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression on standardised features, returned as raw-feature weights ``(K, D)``, bias ``(K,)``.

    The standardisation is folded into the weights, so the result drops into an ``nn.Linear`` that
    sees unscaled features. Two classes become symmetric logits ``±z/2`` (same softmax).
    """
    scaler = StandardScaler().fit(features)
    model = LogisticRegression(C=c, max_iter=5000, random_state=seed)
    model.fit(scaler.transform(features), labels)
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # binary: one score for class 1
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    full_w = np.zeros((n_classes, features.shape[1]))
    full_b = np.full(n_classes, -10.0)  # a class absent from training data starts improbable
    for row, cls in enumerate(model.classes_):
        full_w[cls] = coef[row] / scaler.scale_
        full_b[cls] = intercept[row] - float(np.sum(coef[row] * scaler.mean_ / scaler.scale_))
    return full_w, full_b


def fit_svm(features: np.ndarray, labels: np.ndarray, n_classes: int, c: float = 0.1,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A linear SVM with Platt scaling, folded into one linear layer ``(K, D)``, ``(K,)``.

    The SVM's decision values are calibrated by a logistic regression fitted on them (Platt 1999);
    linear on linear is linear, so the classifier ships as an ordinary ``nn.Linear`` head.
    """
    from sklearn.svm import LinearSVC

    scaler = StandardScaler().fit(features)
    z = scaler.transform(features)
    svm = LinearSVC(C=c, max_iter=20000, random_state=seed).fit(z, labels)
    decision = svm.decision_function(z).reshape(len(z), -1)
    platt_w, platt_b = fit_probe(decision, labels, n_classes, c=1e4, seed=seed)
    svm_w = svm.coef_ / scaler.scale_  # (M, D) on raw features
    svm_b = svm.intercept_ - (svm.coef_ * scaler.mean_ / scaler.scale_).sum(1)
    return platt_w @ svm_w, platt_w @ svm_b + platt_b


def init_head(head: nn.Module, features: torch.Tensor, labels: np.ndarray, n_classes: int,
              c: float = 0.1, seed: int = 0, method: str = "logistic") -> bool:
    """Set a linear head to the linear-probe (or ``svm``) solution; False (head untouched) for MLP heads."""
    layer = final_linear(head)
    if layer is None:
        log.info("linear-probe initialisation needs a linear head (model.head.hidden: []); keeping zero init")
        return False
    fitter = fit_svm if method == "svm" else fit_probe
    weight, bias = fitter(features.numpy(), labels, n_classes, c, seed)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype))
    log.info("head initialised by a linear probe on %d training images (C=%g)", len(labels), c)
    return True
