"""TRAK: first-order influence of every training example on every test example, from gradients on the LoRA
parameters (Park et al. 2023, the ``traker`` package). One fine-tune on the full training set plus gradients
gives an (n_train, n_test) score matrix; dataspex uses it three ways:

* a **baseline**: ``sum of the scores of the kept examples`` predicts each test output for any mask (a linear
  datamodel that needs no retrains); its LDS (Spearman, calibration-free) and R^2 (after an affine calibration
  fitted on the *fit* masks) on the held-out masks sit beside the fitted estimators' in
  ``<run_dir>/trak/faithfulness.json``;
* the default **screen** of the exhaustive pairwise design (``design=pairwise``);
* a **cross-check** column in the report: the TRAK scores of the two examples of each reported pair.

Sign and scale. ``scores[i, t]`` estimates how much keeping training example i *raises* the model output of
test example t: the margin (gold logit minus logsumexp of the others) for classification, the completion
log-probability for causal LMs. Positive = helpful (it lowers the test loss). Scores are only meaningful up to
an affine map per test example, which :func:`fit_calibration` fits on retrained masks.

How the gradients are taken (measured gotchas, see ``notes/environment.md``): traker's default
``FunctionalGradientComputer`` uses ``torch.func.vmap``, which fails inside transformers 5's attention-mask
code, and traker's ``IterativeGradientComputer`` ignores ``grad_wrt`` (it differentiates every parameter,
frozen ones included). :class:`LoraGradientComputer` is the iterative computer restricted to the LoRA
parameters; the model-output functions accept traker's iterative calling form ``(model, None, None, *batch)``
(and the functional form with weights and buffers). On CPU the projector is traker's ``BasicProjector``; on
CUDA its ``CudaProjector`` (the ``fast_jl`` extension) when installed, else ``BasicProjector`` on the GPU.

Files: ``<run_dir>/trak/scores.npz`` (``scores`` (n_train, n_test) float64; the settings in its header, so a
re-run with the same settings reuses it) and ``<run_dir>/trak/faithfulness.json``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np
import torch

from dataspex.errors import DataspexError

log = logging.getLogger("dataspex")

__all__ = [
    "ClassificationMarginOutput", "CompletionLogProbOutput", "LoraGradientComputer", "TrakCalibration",
    "compute_trak_scores", "fit_calibration", "grad_parameter_names", "load_trak_scores", "score_models",
    "stage_trak",
    "trak_faithfulness", "trak_pair_scores", "trak_predict",
]

SCORES_FILE = ("trak", "scores.npz")
FAITHFULNESS_FILE = ("trak", "faithfulness.json")
# Settings that change the scores (the rest - batch size, recompute - do not).
_SCORE_KEYS = ("n_models", "params", "proj_dim", "lambda_reg", "projector", "seed", "half_precision")
# Seeds of the full-data models are drawn as if they were masks with these ids (far from any design's ids).
_MODEL_ID_BASE = 2**31 - 64
# Expected sign of the TRAK prediction for each recorded output: scores predict the margin, and the loss
# moves the other way.
OUTPUT_SIGN = {"margin": 1.0, "loss": -1.0}


# ------------------------------------------------------------------------------------ traker plug-ins

def _forward_logits(model, weights, buffers, input_ids, attention_mask):
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if weights is None:  # traker's IterativeGradientComputer form: (model, None, None, *batch)
        return model(**kwargs).logits
    return torch.func.functional_call(model, (weights, buffers), args=(), kwargs=kwargs).logits


def _as_2d(*tensors):
    """traker's functional path calls per example (no batch dimension); add one where it is missing."""
    if tensors[0].dim() == 1:
        return tuple(t.unsqueeze(0) for t in tensors), True
    return tensors, False


def _output_base():
    from trak.modelout_functions import AbstractModelOutput

    return AbstractModelOutput


class ClassificationMarginOutput(_output_base()):
    """f = gold logit - logsumexp(other logits); d loss / d f = -(1 - p_gold), so Q = 1 - p_gold (TRAK's
    text-classification output). Batch: (input_ids, attention_mask, labels)."""

    def __init__(self) -> None:
        pass

    def get_output(self, model, weights, buffers, input_ids, attention_mask, targets):
        from dataspex.training.common import margins

        (input_ids, attention_mask, targets), single = _as_2d(input_ids, attention_mask, targets)
        out = margins(_forward_logits(model, weights, buffers, input_ids, attention_mask), targets, "classification")
        return out[0] if single else out

    def get_out_to_loss_grad(self, model, weights, buffers, batch):
        input_ids, attention_mask, targets = batch
        with torch.no_grad():
            logits = _forward_logits(model, weights, buffers, input_ids, attention_mask).float()
            p_gold = torch.softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
        return (1.0 - p_gold).clone().detach().unsqueeze(-1)


class CompletionLogProbOutput(_output_base()):
    """f = log-probability of the completion tokens (minus the test loss); loss = -f, so Q = 1.
    Batch: (input_ids, attention_mask, token_targets) with IGNORE at non-completion positions."""

    def __init__(self) -> None:
        pass

    def get_output(self, model, weights, buffers, input_ids, attention_mask, targets):
        from dataspex.training.common import per_example_loss

        (input_ids, attention_mask, targets), single = _as_2d(input_ids, attention_mask, targets)
        logits = _forward_logits(model, weights, buffers, input_ids, attention_mask)
        out = -per_example_loss(logits, targets, "causal_lm")
        return out[0] if single else out

    def get_out_to_loss_grad(self, model, weights, buffers, batch):
        return torch.ones(batch[0].shape[0], 1, device=batch[0].device)


MODEL_OUTPUTS = {"classification": ClassificationMarginOutput, "causal_lm": CompletionLogProbOutput}


def _gradient_computer_base():
    from trak.gradient_computers import AbstractGradientComputer

    return AbstractGradientComputer


class LoraGradientComputer(_gradient_computer_base()):
    """Per-example gradients by one forward pass and one backward per example (no vmap), with respect to the
    parameters named in ``grad_wrt`` only (traker's own IterativeGradientComputer ignores ``grad_wrt``).
    Calls the model-output function as ``(model, None, None, *batch)``, like traker's iterative computer."""

    def __init__(self, model, task, grad_dim, dtype, device, grad_wrt=None) -> None:
        super().__init__(model, task, grad_dim, dtype, device)
        self.grad_wrt = list(grad_wrt) if grad_wrt is not None else None
        self.load_model_params(model)

    def load_model_params(self, model) -> None:
        self.model = model
        named = dict(model.named_parameters())
        names = self.grad_wrt if self.grad_wrt is not None else [n for n, p in named.items() if p.requires_grad]
        missing = [n for n in names if n not in named]
        if missing:
            raise DataspexError(f"TRAK: parameters {missing[:3]} are not in the model")
        self.model_params = [named[n] for n in names]
        for p in self.model_params:
            p.requires_grad_(True)

    def compute_per_sample_grad(self, batch) -> torch.Tensor:
        """One forward and backward per example, its padding cut off: linear in the batch size (backward
        passes through a shared batch graph, as traker's iterative computer does, cost batch size squared)."""
        from trak.utils import parameters_to_vector

        input_ids, attention_mask = batch[0], batch[1]
        n, width = input_ids.shape
        lengths = attention_mask.sum(dim=1).tolist()
        grads = torch.zeros(n, self.grad_dim, device=input_ids.device)
        with torch.enable_grad():
            for k in range(n):
                length = int(lengths[k])
                one = [t[k: k + 1, :length] if t.dim() >= 2 and t.shape[1] == width else t[k: k + 1] for t in batch]
                out = self.modelout_fn.get_output(self.model, None, None, *one)
                grads[k] = parameters_to_vector(torch.autograd.grad(out[0], self.model_params))
        return grads

    def compute_loss_grad(self, batch) -> torch.Tensor:
        return self.modelout_fn.get_out_to_loss_grad(self.model, None, None, batch)


def _relative_ridge_score_computer():
    from trak.score_computers import BasicScoreComputer

    class RelativeRidgeScoreComputer(BasicScoreComputer):
        """traker's BasicScoreComputer with the ridge on X^T X given relative to its mean non-zero eigenvalue
        (trace / min(n, p) for X of shape (n, p)), so one setting fits every model, data and projection size,
        and X^T X stays invertible when proj_dim >= n_train."""

        def get_x_xtx_inv(self, grads, xtx):
            relative = self.lambda_reg
            rank = max(1, min(grads.shape[0], grads.shape[1]))
            self.lambda_reg = float(relative) * float(torch.diagonal(xtx).float().sum()) / rank
            try:
                return super().get_x_xtx_inv(grads, xtx)
            finally:
                self.lambda_reg = relative

    return RelativeRidgeScoreComputer


# ------------------------------------------------------------------------------------------ computing

def grad_parameter_names(model, params: str = "lora") -> list[str]:
    """Names of the parameters TRAK differentiates: ``lora`` (the LoRA A/B matrices) or ``trainable`` (every
    parameter the fine-tune trains: LoRA plus the task head when ``lora.train_head``)."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if params == "trainable":
        names = trainable
    elif params == "lora":
        names = [n for n in trainable if "lora_A" in n or "lora_B" in n]
    else:
        raise DataspexError(f"trak.params={params!r} is not one of: lora, trainable")
    if not names:
        raise DataspexError("TRAK found no LoRA parameters to differentiate (check lora.target_modules)")
    return names


def _device(trak_cfg) -> torch.device:
    wanted = str(trak_cfg.get("device", "auto") or "auto")
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise DataspexError("trak.device=cuda but torch sees no CUDA device: use trak.device=auto or cpu")
    if not (wanted == "cpu" or wanted.startswith("cuda")):
        raise DataspexError(f"trak.device={wanted!r} is not one of: auto, cpu, cuda")
    return torch.device(wanted)


def _projector(trak_cfg, grad_dim: int, device: torch.device, dtype):
    """traker's CudaProjector on CUDA when fast_jl is installed (or asked for), else its BasicProjector."""
    from trak.projectors import CudaProjector, ProjectionType

    kind = str(trak_cfg.get("projector", "auto") or "auto")
    if kind not in ("auto", "basic", "cuda"):
        raise DataspexError(f"trak.projector={kind!r} is not one of: auto, basic, cuda")
    proj_dim, seed = int(trak_cfg.proj_dim), int(trak_cfg.seed)
    if device.type == "cuda" and kind in ("auto", "cuda"):
        try:
            if proj_dim % 512:
                raise ValueError(f"the CUDA projector needs trak.proj_dim to be a multiple of 512, got {proj_dim}")
            projector = CudaProjector(grad_dim=grad_dim, proj_dim=proj_dim, seed=seed,
                                      proj_type=ProjectionType.rademacher, device=device,
                                      max_batch_size=int(trak_cfg.get("cuda_max_batch_size", 32)), dtype=dtype)
            return projector, "cuda"
        except (ImportError, ModuleNotFoundError, RuntimeError, ValueError) as exc:
            if kind == "cuda":
                raise DataspexError(f"trak.projector=cuda is unavailable: {exc}") from exc
            log.info("trak: CudaProjector unavailable (%s); using BasicProjector on the GPU", exc)
    elif kind == "cuda":
        raise DataspexError("trak.projector=cuda needs a CUDA device")
    # normal, not rademacher: bernoulli sampling is not implemented for every dtype on CPU (as traker does)
    proj_type = ProjectionType.normal if device.type == "cpu" else ProjectionType.rademacher
    return _basic_projector_class()(grad_dim=grad_dim, proj_dim=proj_dim, seed=seed, proj_type=proj_type, device=device,
                          dtype=dtype), "basic"


def _basic_projector_class():
    from trak.projectors import BasicProjector

    class OneBlockSafeBasicProjector(BasicProjector):
        """traker 0.3.2's BasicProjector with proj_dim <= its block size (one block) loses its matrix in
        ``finalize_features`` (``free_memory``) and never regenerates it for scoring; regenerate it here."""

        def project(self, grads, model_id):
            if self.num_blocks == 1 and not self.proj_matrix_available and model_id == self.model_id:
                self.generate_sketch_matrix(self.generator_states[0])
            return super().project(grads, model_id)

    return OneBlockSafeBasicProjector


def _batches(encoded, batch_size: int, device):
    for start in range(0, len(encoded), batch_size):
        index = np.arange(start, min(start + batch_size, len(encoded)))
        b = encoded.batch(index)
        yield index, (b["input_ids"].to(device), b["attention_mask"].to(device), b["targets"].to(device))


def compute_trak_scores(cfg, store=None, data=None, base=None, return_meta: bool = False):
    """TRAK scores (n_train, n_test) for the run's model, LoRA and training recipe.

    Fine-tunes ``trak.n_models`` models on the full training set (seeds drawn like masks of their own), takes
    per-example gradients of the model output on the parameters ``trak.params`` names, projects them, and
    lets traker's ``TRAKer`` featurize, finalize and score (averaging over the models). ``store`` (optional)
    puts traker's scratch files under ``<run_dir>/trak``; ``data``/``base`` default to the config's.
    """
    from omegaconf import OmegaConf

    from dataspex.models import load_base_model, load_tokenizer
    from dataspex.training.common import encode
    from dataspex.training.naive import finetune

    tcfg = cfg.trak
    if data is None:
        from dataspex.data import load_data

        data = load_data(cfg.data, cfg.model.task)
    if int(tcfg.n_models) < 1:
        raise DataspexError(f"trak.n_models={tcfg.n_models} must be >= 1")
    if int(tcfg.proj_dim) < 1:
        raise DataspexError(f"trak.proj_dim={tcfg.proj_dim} must be >= 1")
    started = time.perf_counter()
    _device(tcfg)  # refuse a bad trak.device before the fine-tunes
    tokenizer = load_tokenizer(cfg.model)
    if base is None:
        n_labels = len(data.label_names) if data.label_names else None
        base = load_base_model(cfg.model, n_labels, cfg.train.seed)
    train = encode(data.train, tokenizer, data.task, cfg.model.max_length)
    test = encode(data.test, tokenizer, data.task, cfg.model.max_length)
    full = np.ones(len(train), dtype=np.uint8)

    models = []
    for k in range(int(tcfg.n_models)):
        log.info("trak: fine-tuning model %d/%d on all %d training examples", k + 1, tcfg.n_models, len(train))
        models.append(finetune(base, cfg.lora, cfg.train, train, full, _MODEL_ID_BASE + k))
    scratch_parent = store.path("trak") if store is not None else None
    scores, info = score_models(models, train, test, tcfg, scratch_parent)
    meta = dict(info, settings={k: OmegaConf.to_container(tcfg, resolve=True).get(k) for k in _SCORE_KEYS},
                model_output="margin" if data.task == "classification" else "completion_logprob",
                seconds=time.perf_counter() - started)
    log.info("trak: scores for %d x %d (train x test) from %d gradients of %d parameters in %.1f s",
             scores.shape[0], scores.shape[1], len(train) + len(test), info["n_params"], meta["seconds"])
    return (scores, meta) if return_meta else scores


def score_models(models, train, test, tcfg, scratch_parent: str | None = None):
    """TRAK scores (n_train, n_test) of fine-tuned peft ``models`` (an ensemble: one traker model id each) on
    encoded splits, with the ``trak`` settings ``tcfg`` (attribute access and ``.get``); returns (scores, info).

    Gradients are taken on ``trak.device``; traker's scratch files go to a temporary folder under
    ``scratch_parent`` (default: the system's), removed afterwards."""
    from trak import TRAKer

    device = _device(tcfg)
    dtype = torch.float16 if (tcfg.get("half_precision") and device.type == "cuda") else torch.float32
    models = [m.to(device).eval() for m in models]
    model = models[0]
    grad_wrt = grad_parameter_names(model, str(tcfg.params))
    grad_dim = sum(dict(model.named_parameters())[n].numel() for n in grad_wrt)
    projector, projector_kind = _projector(tcfg, grad_dim, device, dtype)
    batch_size = max(1, int(tcfg.get("batch_size", 16)))
    if scratch_parent:
        os.makedirs(scratch_parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".traker-", dir=scratch_parent) as scratch:
        traker = TRAKer(model=model, task=MODEL_OUTPUTS[train.task](), train_set_size=len(train), save_dir=scratch,
                        load_from_save_dir=True, device=str(device), gradient_computer=LoraGradientComputer,
                        projector=projector, score_computer=_relative_ridge_score_computer(),
                        use_half_precision=dtype == torch.float16, grad_wrt=grad_wrt,
                        lambda_reg=float(tcfg.lambda_reg), logging_level=logging.WARNING)
        for k, m in enumerate(models):
            traker.load_checkpoint(m.state_dict(), model_id=k)
            for index, batch in _batches(train, batch_size, device):
                traker.featurize(batch=batch, inds=index)
        traker.finalize_features()
        for k, m in enumerate(models):
            traker.start_scoring_checkpoint("test", m.state_dict(), model_id=k, num_targets=len(test))
            for index, batch in _batches(test, batch_size, device):
                traker.score(batch=batch, inds=index)
        scores = np.array(traker.finalize_scores("test"), dtype=np.float64)
        del traker
    if not np.all(np.isfinite(scores)):
        raise DataspexError("TRAK produced non-finite scores (raise trak.lambda_reg, or check the fine-tune)")
    return scores, {"n_params": int(grad_dim), "projector_used": projector_kind, "device": str(device)}


def save_trak_scores(store, scores: np.ndarray, meta: dict) -> str:
    from dataspex.io import save_npz

    path = store.path(*SCORES_FILE)
    save_npz(path, {"scores": np.asarray(scores, dtype=np.float64)}, meta)
    return path


def load_trak_scores(store, with_meta: bool = False):
    """The run's TRAK scores (n_train, n_test) float64, or None if ``dataspex trak`` has not run.

    ``scores[i, t] > 0``: keeping training example i raises test example t's margin (lowers its loss)."""
    from dataspex.io import load_npz

    path = store.path(*SCORES_FILE)
    if not os.path.exists(path):
        return (None, None) if with_meta else None
    arrays, meta = load_npz(path)
    return (arrays["scores"], meta) if with_meta else arrays["scores"]


# ---------------------------------------------------------------------------------- using the scores

def _with_mean(scores: np.ndarray) -> np.ndarray:
    """Scores for every test example, then for the mean test output (as ``dataspex fit`` models them)."""
    return np.column_stack([scores, scores.mean(axis=1)])


class TrakCalibration:
    """Per-output affine map from the summed TRAK scores to an output's scale: y ~ scale * (x @ S) + intercept."""

    def __init__(self, scale: np.ndarray, intercept: np.ndarray) -> None:
        self.scale = np.asarray(scale, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return raw * self.scale + self.intercept


def fit_calibration(scores, masks, Y) -> TrakCalibration:
    """Least-squares scale and intercept per output of ``Y`` (m, T) on ``masks @ scores``."""
    raw = trak_predict(scores, masks)
    Y = np.asarray(Y, dtype=np.float64).reshape(raw.shape)
    rc = raw - raw.mean(axis=0)
    yc = Y - Y.mean(axis=0)
    var = (rc**2).sum(axis=0)
    scale = np.where(var > 0, (rc * yc).sum(axis=0) / np.where(var > 0, var, 1.0), 0.0)
    return TrakCalibration(scale, Y.mean(axis=0) - scale * raw.mean(axis=0))


def trak_predict(scores, masks, calibration: TrakCalibration | None = None) -> np.ndarray:
    """Predicted outputs (m, T) for masks (m, n): the sum of the kept examples' scores (margin direction),
    mapped to an output's scale (e.g. the loss in nats) by ``calibration`` when given."""
    scores = np.asarray(scores, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    if masks.ndim != 2 or masks.shape[1] != scores.shape[0]:
        raise DataspexError(f"masks of shape {masks.shape} do not match TRAK scores for {scores.shape[0]} "
                            "training examples")
    raw = masks @ scores
    return calibration.apply(raw) if calibration is not None else raw


def _metrics(Y_ho, pred_ho, ranked=None) -> dict:
    """R^2 of ``pred_ho`` and LDS of ``ranked`` (default: ``pred_ho``) against the measured ``Y_ho``."""
    from dataspex.metrics import faithfulness_r2, lds

    out = {"r2_mean_over_outputs": float(faithfulness_r2(Y_ho, pred_ho)),
           "r2_per_output": [float(v) for v in faithfulness_r2(Y_ho, pred_ho, multioutput="raw_values")]}
    per = lds(Y_ho, pred_ho if ranked is None else ranked, multioutput="raw_values")
    out["lds_mean_over_outputs"] = float(np.nanmean(per)) if np.isfinite(per).any() else None
    out["lds_per_output"] = [None if not np.isfinite(v) else float(v) for v in per]
    return out


def trak_faithfulness(store, scores=None, outputs=("loss", "margin"), write: bool = True) -> dict:
    """LDS and R^2 of TRAK on the run's held-out masks, beside every estimator ``dataspex fit`` saved.

    For each recorded output (loss, margin) and each test example plus the mean test output (the columns
    ``dataspex fit`` models): TRAK's LDS is the Spearman correlation of the summed scores (signed for the
    output: minus for the loss) with the measured outputs, calibration-free; its R^2 is after the affine
    calibration fitted on the fit masks (``spex`` masks for a SPEX design). Fitted estimators are scored on
    the same held-out masks for the output they were fitted on. Returns (and writes, with ``write``) the
    table; ``{"available": false, "reason": ...}`` when there is nothing to score yet.
    """
    from dataspex.estimators import InteractionResult
    from dataspex.io import read_json, write_json

    if scores is None:
        scores = load_trak_scores(store)
    table: dict = {"available": False}
    if scores is None:
        table["reason"] = "no TRAK scores: run `dataspex trak`"
    elif not store.has_design():
        table["reason"] = "no design yet"
    else:
        design = store.load_design()
        results = store.load_results(design)
        fit_role = "spex" if design.meta.get("kind") == "spex" else "fit"
        fit_keep = np.isin(results.mask_ids, design.mask_ids[design.roles == fit_role])
        ho_keep = np.isin(results.mask_ids, design.mask_ids[design.roles == "heldout"])
        if fit_keep.sum() < 2 or ho_keep.sum() < 2:
            table["reason"] = (f"need >= 2 finished fit and held-out masks, have {int(fit_keep.sum())} and "
                               f"{int(ho_keep.sum())}: run `dataspex train`")
        elif results.masks.shape[1] != scores.shape[0] or results.losses.shape[1] != scores.shape[1]:
            raise DataspexError(f"TRAK scores {scores.shape} do not match the run's {results.masks.shape[1]} "
                                f"training and {results.losses.shape[1]} test examples: re-run `dataspex trak`")
        else:
            S = _with_mean(scores)
            fitted = read_json(store.path("fit", "faithfulness.json")) if os.path.exists(
                store.path("fit", "faithfulness.json")) else {}
            table.update(available=True, n_fit_masks=int(fit_keep.sum()), n_heldout_masks=int(ho_keep.sum()),
                         fit_role=fit_role, outputs={})
            for output in outputs:
                Y = results.outputs(output)
                Y = np.column_stack([Y, Y.mean(axis=1)])
                cal = fit_calibration(S, results.masks[fit_keep], Y[fit_keep])
                raw = trak_predict(S, results.masks[ho_keep])
                entry = {"trak": dict(_metrics(Y[ho_keep], cal.apply(raw), ranked=OUTPUT_SIGN[output] * raw),
                                      calibration_sign_as_expected=float(np.mean(
                                          np.sign(cal.scale) == OUTPUT_SIGN[output])))}
                for name, info in fitted.items():
                    path = store.path("fit", f"{name}.npz")
                    if info.get("output", "loss") != output or not os.path.exists(path):
                        continue
                    res = InteractionResult.load(path)
                    if res.n_outputs != Y.shape[1]:
                        continue
                    entry[name] = _metrics(Y[ho_keep], res.predict(results.masks[ho_keep]))
                table["outputs"][output] = entry
    if write:
        write_json(store.path(*FAITHFULNESS_FILE), table)
    return table


def trak_pair_scores(scores, pairs, n_test: int | None = None):
    """The TRAK scores of both examples of each pair, for the report: a DataFrame with columns ``trak_i`` and
    ``trak_j`` aligned with ``pairs`` (columns i, j and optionally output: ``test_<t>``, an int, or
    ``mean``/absent for the mean over test examples). Margin direction: positive = the example helps."""
    import pandas as pd

    scores = np.asarray(scores, dtype=np.float64)
    mean = scores.mean(axis=1)
    cols = []
    outputs = pairs["output"] if "output" in getattr(pairs, "columns", []) else ["mean"] * len(pairs)
    for output in outputs:
        t = output
        if isinstance(t, str):
            t = int(t.split("_", 1)[1]) if t.startswith("test_") else (int(t) if t.isdigit() else None)
        cols.append(None if t is None or t >= scores.shape[1] or t < 0 else int(t))
    i = pairs["i"].to_numpy(dtype=np.int64)
    j = pairs["j"].to_numpy(dtype=np.int64)
    ti = np.array([mean[a] if t is None else scores[a, t] for a, t in zip(i, cols)], dtype=np.float64)
    tj = np.array([mean[b] if t is None else scores[b, t] for b, t in zip(j, cols)], dtype=np.float64)
    return pd.DataFrame({"trak_i": ti, "trak_j": tj}, index=pairs.index)


# -------------------------------------------------------------------------------------------- stage

def stage_trak(cfg) -> np.ndarray:
    """``dataspex trak``: compute (or reuse) the run's TRAK scores, then score them on the held-out masks."""
    from omegaconf import OmegaConf

    from dataspex.pipeline import open_run

    store, data = open_run(cfg)
    settings = {k: OmegaConf.to_container(cfg.trak, resolve=True).get(k) for k in _SCORE_KEYS}
    scores, meta = load_trak_scores(store, with_meta=True)
    if scores is not None and not cfg.trak.recompute and meta.get("settings") == settings \
            and scores.shape == (data.n_train, data.n_test):
        log.info("trak: reusing %s (same settings; trak.recompute=true to redo)", store.path(*SCORES_FILE))
    else:
        if cfg.train.threads:
            torch.set_num_threads(int(cfg.train.threads))
        scores, meta = compute_trak_scores(cfg, store, data, return_meta=True)
        log.info("trak: scores -> %s", save_trak_scores(store, scores, meta))
    table = trak_faithfulness(store, scores)
    if table["available"]:
        for output, entry in table["outputs"].items():
            row = "  ".join(f"{name} LDS {m['lds_mean_over_outputs']:.3f} R^2 {m['r2_mean_over_outputs']:.3f}"
                            for name, m in entry.items() if m.get("lds_mean_over_outputs") is not None)
            log.info("trak: held-out %s: %s", output, row)
    else:
        log.info("trak: no held-out scoring yet (%s)", table["reason"])
    return scores
