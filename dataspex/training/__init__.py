"""Retraining: fine-tune a LoRA adapter per mask and record every test example's loss.

``common`` holds what every engine shares (tokenising once, batching, seeds, losses); ``naive`` is the
reference loop (one peft model per mask); ``engine`` trains many adapters at once with identical results.
"""

from dataspex.errors import DataspexError

ENGINES = ("naive", "batched")


def get_engine(name: str):
    """The ``train_masks(base, lora_cfg, train_cfg, train, test, masks, mask_ids)`` generator of an engine;
    each yields ``(mask_id, losses, margins)`` per mask."""
    if name == "naive":
        from dataspex.training.naive import train_masks
    elif name == "batched":
        from dataspex.training.engine import train_masks
    else:
        raise DataspexError(f"train.engine={name!r} is not one of: {', '.join(ENGINES)}")
    return train_masks
