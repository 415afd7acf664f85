"""TRAK scores from gradients on the LoRA parameters: traker's plug-ins and the scoring run. Everything that
touches torch and traker lives here; the saved scores and their uses are :mod:`dataspex.fit.trak.scores`.

How the gradients are taken (measured gotchas, see ``notes/environment.md``): traker's default
``FunctionalGradientComputer`` uses ``torch.func.vmap``, which fails inside transformers 5's attention-mask
code, and traker's ``IterativeGradientComputer`` ignores ``grad_wrt`` (it differentiates every parameter,
frozen ones included). :class:`LoraGradientComputer` is the iterative computer restricted to the LoRA
parameters; the model-output functions accept traker's iterative calling form ``(model, None, None, *batch)``
(and the functional form with weights and buffers). On CPU the projector is traker's ``BasicProjector``; on
CUDA its ``CudaProjector`` (the ``fast_jl`` extension) when installed, else ``BasicProjector`` on the GPU.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from dataspex.core.data import load_data
from dataspex.core.errors import DataspexError
from dataspex.core.models import load_base_model, load_tokenizer
from dataspex.fit.trak.scores import SCORE_KEYS
from dataspex.train.common import encode, margins, per_example_loss
from dataspex.train.naive import finetune

log = logging.getLogger("dataspex")

__all__ = [
    "ClassificationMarginOutput", "CompletionLogProbOutput", "LoraGradientComputer", "MODEL_OUTPUTS",
    "compute_trak_scores", "grad_parameter_names", "score_models",
]

# Seeds of the full-data models are drawn as if they were masks with these ids (far from any design's ids).
_MODEL_ID_BASE = 2**31 - 64


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
    from trak.modelout_functions import AbstractModelOutput  # heavy: traker (~2 s); runs at class definition

    return AbstractModelOutput


class ClassificationMarginOutput(_output_base()):
    """f = gold logit - logsumexp(other logits); d loss / d f = -(1 - p_gold), so Q = 1 - p_gold (TRAK's
    text-classification output). Batch: (input_ids, attention_mask, labels)."""

    def __init__(self) -> None:
        pass

    def get_output(self, model, weights, buffers, input_ids, attention_mask, targets):
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
        (input_ids, attention_mask, targets), single = _as_2d(input_ids, attention_mask, targets)
        logits = _forward_logits(model, weights, buffers, input_ids, attention_mask)
        out = -per_example_loss(logits, targets, "causal_lm")
        return out[0] if single else out

    def get_out_to_loss_grad(self, model, weights, buffers, batch):
        return torch.ones(batch[0].shape[0], 1, device=batch[0].device)


MODEL_OUTPUTS = {"classification": ClassificationMarginOutput, "causal_lm": CompletionLogProbOutput}


def _gradient_computer_base():
    from trak.gradient_computers import AbstractGradientComputer  # heavy: traker (~2 s); runs at class definition

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
        from trak.utils import parameters_to_vector  # heavy: traker, kept local with the rest

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
    from trak.score_computers import BasicScoreComputer  # heavy: traker; subclass built on first use

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
    from trak.projectors import CudaProjector, ProjectionType  # heavy: traker, kept local with the rest

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
    from trak.projectors import BasicProjector  # heavy: traker; subclass built on first use

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
    tcfg = cfg.trak
    if data is None:
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
    meta = dict(info, settings={k: OmegaConf.to_container(tcfg, resolve=True).get(k) for k in SCORE_KEYS},
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
    from trak import TRAKer  # heavy: traker, kept local with the rest

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
