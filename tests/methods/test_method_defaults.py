"""Every method's defaults come from one named source, never from our own test accuracy: Mammoth's
best arguments for seq-MNIST with buffer 500 (utils/best_args.py) where Mammoth has the method,
else the method's paper or official code (its MNIST-like setting if it has one), and Renate's
defaults for Renate's learners. ``describe`` (``ricordo methods NAME``) names the source.

The expected values below are copied from those sources (cited beside each), not from our
results; the global training options (lr, epochs, batch size) stay UpdateConfig's."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import FAST

from ricordo import Updater
from ricordo.data import Scenario
from ricordo.errors import TrainingDivergedError
from ricordo.methods import METHODS
from ricordo.methods.bic import BiCParams
from ricordo.methods.describe import describe
from ricordo.methods.fisher import diagonal_fisher

# name -> (the words the source is named by, the method's hyperparameters in that source)
SOURCES: dict[str, tuple[str, dict[str, Any]]] = {
    # Mammoth best_args['seq-mnist'][...][500]: ER's replayed batch is its batch (10 = 10).
    "er": ("Mammoth's best arguments, seq-MNIST, buffer 500", {"memory_batch_size": None}),
    # ['der'][500]: alpha 1.0; ['derpp'][500]: alpha 1.0, beta 0.5.
    "der": ("Mammoth's best arguments, seq-MNIST, buffer 500", {"alpha": 1.0}),
    "der++": ("Mammoth's best arguments, seq-MNIST, buffer 500", {"alpha": 1.0, "beta": 0.5}),
    # ['lwf'][-1]: alpha 1, softmax_temp 2.0.
    "lwf": ("Mammoth's best arguments, seq-MNIST", {"alpha": 1.0, "temperature": 2.0}),
    # ['ewc_on'][-1]: e_lambda 90, gamma 1.0 (Mammoth has no offline EWC), with the Fisher
    # estimate of models/ewc_on.py that λ was tuned with.
    "ewc": (
        "Mammoth's best arguments for online EWC (ewc_on), seq-MNIST",
        {"ewc_lambda": 90.0, "fisher": "mammoth"},
    ),
    "online-ewc": ("ewc_on, seq-MNIST", {"ewc_lambda": 90.0, "gamma": 1.0, "fisher": "mammoth"}),
    # ['si'][-1]: c 1.0, xi 0.9.
    "si": ("Mammoth's best arguments, seq-MNIST", {"c": 1.0, "xi": 0.9}),
    # ['icarl'][500] sets no iCaRL option; the paper classifies by the nearest mean.
    "icarl": ("the paper (NME)", {"nme": True}),
    # No Mammoth entry; the paper's replayed batch equals the incoming one (10 + 10).
    "er-ace": ("the paper and the authors' code", {"memory_batch_size": None}),
    # NeurAI-Lab/CLS-ER utils/best_args.py ['seq-mnist']['clser'][500].
    "cls-er": (
        "the authors' best arguments for S-MNIST, buffer 500",
        {
            "consistency_weight": 2.0,  # reg_weight
            "plastic_rate": 1.0,  # plastic_model_update_freq
            "plastic_decay": 0.99,  # plastic_model_alpha
            "stable_rate": 0.9,  # stable_model_update_freq
            "stable_decay": 0.99,  # stable_model_alpha
            "adapt_decays": False,  # the paper's rule min(1 - 1/(t+1), alpha)
        },
    ),
    # drimpossible/GDumb scripts/replicate.sh (MNIST, memory 500, MLP) and src/opts.py: 128
    # passes, minlr / maxlr = 0.0005 / 0.05.
    "gdumb": (
        "GDumb's official code for MNIST",
        {"fitting_epochs": 128, "schedule": "sgdr", "min_lr_ratio": 0.01, "reset": True},
    ),
    # FACIL src/approach/bic.py (the paper's code): T 2, 10% validation, 200 bias epochs, SGD,
    # 0.1 * beta**2 / 2, lamb -1 (the paper's lambda), no accept guard, no alpha L2.
    "bic": (
        "the paper's CIFAR-100 setting and code (FACIL's reproduction)",
        {
            "temperature": 2.0,
            "bias_val_fraction": 0.1,
            "bias_epochs": 200,
            "bias_decay": 0.1,
            "bias_optimizer": "sgd",
            "loss_weighting": "paper",
        },
    ),
    # renate.defaults: batch_memory_frac 0.5 (as many memory rows as new ones), loss weight None.
    "offline-er": (
        "Renate's defaults",
        {"memory_batch_size": None, "loss_weight_new_data": None},
    ),
    # iamwangyabin/S-Prompts: prompt_length 10 (nn.Linear holder), KMeans(n_clusters=5,
    # random_state=0), L1 nearest centroid (methods/sprompt.py), CosineAnnealingLR.
    "s-prompts": (
        "the official S-Prompts code",
        {
            "prompt_length": 10,
            "prompt_init": "linear",
            "clusters": 5,
            "distance": "l1",
            "schedule": "cosine",
            "routing": "frozen",
        },
    ),
    # CoLoR / S-LoRA (values unverified in the papers): Renate's SPeft routing, peft's LoRA.
    "color": (
        "Renate's SPeft routing",
        {"clusters": 5, "distance": "l2", "rank": 8, "alpha": 8.0, "dropout": 0.0},
    ),
    "s-lora": (
        "Renate's SPeft",
        {"clusters": 5, "distance": "l2", "rank": 8, "alpha": 8.0, "dropout": 0.0},
    ),
    # Renate's LearningToPromptTransformer (pool_size 10, pool_selection_size 5, prompt_size 5,
    # prompts/keys U(-1, 1), patch_pooler prompt_mean) and Learner (prompt_sim_loss_weight 0.5);
    # the official L2P code's train_mask.
    "l2p": (
        "Renate's LearningToPromptTransformer",
        {
            "pool_size": 10,
            "top_n": 5,
            "prompt_length": 5,
            "key_loss_weight": 0.5,
            "prompt_init": "uniform",
            "pooling": "prompts",
            "train_mask": True,
        },
    ),
    # L2L (no public code): l2p's retrieval with peft's LoRA defaults, as color and s-lora.
    "l2l": (
        "Renate's L2P",
        {"pool_size": 10, "top_n": 5, "key_loss_weight": 0.5, "rank": 8, "alpha": 8.0},
    ),
    # Renate's RepeatedDistillationModelUpdater trains the consolidation for max_epochs at lr.
    "rd": (
        "Renate's RepeatedDistillationModelUpdater",
        {"fitting_epochs": None, "schedule": "constant"},
    ),
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_defaults_are_the_named_sources_values(name: str) -> None:
    source, expected = SOURCES[name]
    defaults = dataclasses.asdict(METHODS.get(name).Params())
    assert {k: defaults[k] for k in expected} == expected
    doc = describe(name)
    assert source in doc.defaults_from
    assert "Defaults" in doc.doc  # the module docstring gives the account of the source


def test_every_method_with_parameters_names_its_source() -> None:
    """Also the methods outside SOURCES (a-gem, pod-er, super-er: their own tests pin them)."""
    unnamed = [
        name
        for name in METHODS.names()
        if dataclasses.fields(METHODS.get(name).Params) and not describe(name).defaults_from
    ]
    assert unnamed == []


def test_a_subclass_is_not_described_with_its_parents_source() -> None:
    """Super-ER is a DER subclass whose defaults are Renate's: describe reads the source set on
    the class itself, so it never reports DER's (Mammoth's)."""
    assert issubclass(METHODS.get("super-er"), METHODS.get("der"))
    assert "Mammoth" not in describe("super-er").defaults_from
    assert describe("der++").defaults_from == describe("der").defaults_from  # set on both


# -- EWC: Mammoth's λ with Mammoth's Fisher estimate


def test_mammoth_fisher_matches_its_closed_form() -> None:
    """Softmax regression z = Wx + b, as models/ewc_on.py computes it: per example the squared
    gradient of log p(y|x) at the observed label, (p_k - [k = y])² x_j², times p(y|x)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 3))
    x = torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.0, -1.0], [2.0, 0.5, 1.5], [-1.0, -0.5, 2.0]])
    y = torch.tensor([0, 2, 1, 1])
    with torch.no_grad():
        p = model(x).softmax(1)
    weighted = p[torch.arange(4), y][:, None] * (p - torch.nn.functional.one_hot(y, 3)).pow(2)
    fisher = diagonal_fisher(model, x, y, kind="mammoth", batch_size=3)  # two batches
    torch.testing.assert_close(fisher["1.weight"], weighted.T @ x.pow(2) / len(x))
    torch.testing.assert_close(fisher["1.bias"], weighted.mean(0))


def test_ewc_defaults_train_where_mammoths_lambda_with_the_true_fisher_diverges(
    digits_scenario: Scenario,
) -> None:
    """λ 90 was tuned with Mammoth's estimate; the true Fisher is several times larger, and the
    same λ then makes SGD diverge at the default lr: why the estimate is part of the default."""
    options = dict(lr=0.05, epochs=10, hidden=(256, 128), progress=False)
    updater = Updater(method="ewc", **options)
    for chunk in digits_scenario.train[:2]:
        updater.update(chunk)
    assert updater.updates == 2
    true = Updater(method="ewc", params={"fisher": "true"}, **options)
    true.update(digits_scenario.train[0])
    with pytest.raises(TrainingDivergedError, match="lower --lr"):
        true.update(digits_scenario.train[1])


# -- older states keep what they recorded


def test_bic_states_saved_before_the_opt_in_options_keep_their_fit(
    digits_scenario: Scenario, tmp_path: Path
) -> None:
    """A state written before bias_alpha_decay and bias_accept_guard existed recorded
    bias_optimizer=lbfgs and loss_weighting=normalized (the defaults then); it reloads with those,
    and the two new options resolve to what that version did (on with lbfgs)."""
    former = {"bias_optimizer": "lbfgs", "loss_weighting": "normalized"}
    updater = Updater(method="bic", params=former, **FAST)
    updater.update(digits_scenario.train[0])
    # What that version recorded: every field it had, explicitly, and not the two new ones.
    older = {k: v for k, v in updater.config.params.items() if not k.startswith("bias_a")}
    assert set(updater.config.params) - set(older) == {"bias_alpha_decay", "bias_accept_guard"}
    updater.config = updater.config.replace(params=older)
    updater.save(str(tmp_path / "old"))
    loaded = Updater.load(str(tmp_path / "old"))
    p = loaded.method.params
    assert (p.bias_optimizer, p.loss_weighting) == ("lbfgs", "normalized")
    assert p.bias_alpha_decay is None and p.bias_accept_guard is None
    assert p.ours(p.bias_alpha_decay) and p.ours(p.bias_accept_guard)
    assert not BiCParams().ours(BiCParams().bias_accept_guard)  # the published default: off


@pytest.mark.parametrize(
    ("method", "former"),
    [
        ("cls-er", {"consistency_weight": 0.1, "plastic_rate": 0.9, "stable_rate": 0.7,
                    "plastic_decay": 0.999, "stable_decay": 0.999, "adapt_decays": True}),
        ("rd", {"fitting_epochs": 256, "schedule": "sgdr"}),
        ("der++", {"alpha": 0.2, "beta": 0.5}),
        ("si", {"c": 0.5, "xi": 1.0}),
    ],
)  # fmt: skip
def test_states_keep_the_defaults_they_were_saved_with(
    method: str, former: dict[str, Any], digits_scenario: Scenario, tmp_path: Path
) -> None:
    """Params are stored explicitly, so a state saved with the former defaults keeps them."""
    params = {**former, "fitting_epochs": 2} if method == "rd" else former
    updater = Updater(method=method, params=params, **FAST)
    updater.update(digits_scenario.train[0])
    updater.save(str(tmp_path / "v0"))
    loaded = Updater.load(str(tmp_path / "v0"))
    stored = dataclasses.asdict(loaded.method.params)
    assert {k: stored[k] for k in params} == params
    assert stored != dataclasses.asdict(type(loaded.method.params)())  # not today's defaults
    x = digits_scenario.test[0].x
    assert torch.equal(loaded.predict_logits(x), updater.predict_logits(x))
