"""Test-set BatchNorm adaptation (AdaBN) on a finished hold-out run: does it close the train→test shift?

The measurement behind docs/results.md's chest X-ray note on domain adaptation. The run's model
(fold 0) predicts its test images four ways, at the run's threshold and test-time augmentation:

- as trained;
- ``adabn plain``: every BatchNorm's statistics replaced by those of the (unlabelled) test images
  (Li et al. 2017, "Revisiting batch normalization for practical domain adaptation");
- ``adabn relative``: the statistics moved so that test activations are normalised to where the
  training images' activations were under the trained statistics — the right form for a model
  fine-tuned with frozen (ImageNet) statistics, ``transfer.bn: frozen``;
- ``control``: the relative rule with the training images in place of the test images, which must
  reproduce "as trained" exactly (checks the implementation).

Statistics are computed with the whole set in one batch, layer after layer (each layer sees the
already adapted layers below it); the training side uses 800 random training images. Prints JSON lines.

    .venv/bin/python docs/scripts/adabn_check.py runs/studies/chest-xray-strategies/cells/ft_from_cut
"""

from __future__ import annotations

import copy
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medtl import artifact
from medtl.config import ExperimentConfig
from medtl.data.sources import load_images, load_table
from medtl.train.inference import predict_probs

BN = nn.modules.batchnorm._BatchNorm


def main(run: Path) -> None:
    models, meta = artifact.load_fold_models(run)
    model = models[min(models)][0]
    data = ExperimentConfig.model_validate(meta.config).data
    loaded = load_images(load_table(data), data, progress=False)
    where = {s.id: i for i, s in enumerate(loaded.table.samples)}
    with open(run / "splits.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    idx = {r: np.array([where[x["id"]] for x in rows if x["role"] == r]) for r in ("train", "test")}
    norm, pos = meta.normalizer(), meta.positive_index

    def batch(ids: np.ndarray) -> torch.Tensor:
        return norm(torch.from_numpy(np.ascontiguousarray(loaded.images[ids])).permute(0, 3, 1, 2))

    @torch.inference_mode()
    def source_stats(ids: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-BatchNorm input mean and variance of the trained model on ``ids`` (chunked: no adaptation)."""
        sums: dict[int, list] = {}
        bns = [m for m in model.modules() if isinstance(m, BN)]
        def record(k: int, n: int):
            def hook(mod: BN, inp: tuple) -> None:
                x = inp[0].float()
                sums.setdefault(k, []).append((x.mean((0, 2, 3)) * n, (x * x).mean((0, 2, 3)) * n, n))
            return hook

        for chunk in np.array_split(ids, max(1, len(ids) // 200)):
            hooks = [b.register_forward_pre_hook(record(k, len(chunk))) for k, b in enumerate(bns)]
            model.eval()(batch(chunk))
            for h in hooks:
                h.remove()
        out = []
        for k in range(len(bns)):
            n = sum(v[2] for v in sums[k])
            mu, sq = sum(v[0] for v in sums[k]) / n, sum(v[1] for v in sums[k]) / n
            out.append((mu, sq - mu * mu))
        return out

    @torch.inference_mode()
    def adapted(ids: np.ndarray, source: list | None) -> nn.Module:
        net = copy.deepcopy(model)

        def hook(mod: BN, inp: tuple, k: int) -> None:
            x = inp[0].float()
            mu_t, var_t = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
            if source is None:
                mod.running_mean.copy_(mu_t)
                mod.running_var.copy_(var_t)
                return
            mu_s, var_s = source[k]
            ratio = ((var_t + mod.eps) / (var_s + mod.eps)).sqrt()
            mean_i, var_i = mod.running_mean.clone(), mod.running_var.clone()
            mod.running_mean.copy_(mu_t - ratio * (mu_s - mean_i))
            mod.running_var.copy_(ratio ** 2 * (var_i + mod.eps) - mod.eps)

        hooks = [b.register_forward_pre_hook(lambda mod, inp, k=k: hook(mod, inp, k))
                 for k, b in enumerate(m for m in net.modules() if isinstance(m, BN))]
        net.eval()(batch(ids))
        for h in hooks:
            h.remove()
        return net

    y = np.array([loaded.table.samples[i].label == pos for i in idx["test"]], dtype=int)

    def report(name: str, net: nn.Module) -> None:
        p = predict_probs(net, norm, loaded.images, idx["test"], tta=meta.tta, fast=False)[:, pos]
        pred = p >= meta.threshold
        print(json.dumps({"run": str(run), "variant": name, "auc": round(float(roc_auc_score(y, p)), 4),
                          "accuracy": round(float(np.mean(pred == y)), 4),
                          "sensitivity": round(float(pred[y == 1].mean()), 4),
                          "specificity": round(float(1 - pred[y == 0].mean()), 4),
                          "threshold": round(meta.threshold, 4)}), flush=True)

    train = np.random.default_rng(0).choice(idx["train"], min(800, len(idx["train"])), replace=False)
    source = source_stats(train)
    report("as trained", model)
    report("adabn plain", adapted(idx["test"], None))
    report("adabn relative", adapted(idx["test"], source))
    report("control (training images, relative)", adapted(train, source))


if __name__ == "__main__":
    torch.set_num_threads(2)
    for arg in sys.argv[1:]:
        main(Path(arg))
