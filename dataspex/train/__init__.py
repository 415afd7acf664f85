"""Retraining: fine-tune a LoRA adapter per mask and record every test example's loss.

``common`` holds what every engine shares (tokenising once, batching, seeds, losses); ``naive`` is the
reference loop (one peft model per mask); ``engine`` trains many adapters at once with identical results, built
from ``modules`` (what peft trains, the batched nn.Modules), ``optimizer`` (batched AdamW), ``packing`` (splits on
the device, packed tokens) and ``runners`` (one per architecture).
"""

from dataspex.core.errors import DataspexError
from dataspex.train.engine import train_masks as batched_train_masks
from dataspex.train.naive import train_masks as naive_train_masks

# train.engine -> its train_masks generator
_TRAIN_MASKS = {"naive": naive_train_masks, "batched": batched_train_masks}
ENGINES = tuple(_TRAIN_MASKS)


def get_engine(name: str):
    """The ``train_masks(base, lora_cfg, train_cfg, train, test, masks, mask_ids)`` generator of an engine;
    each yields ``(mask_id, losses, margins, train_losses)`` per mask as soon as that mask is trained (the
    batched engine: in pass order, not input order), ``train_losses`` being its training-loss record
    (``common.loss_record``)."""
    if name not in ENGINES:
        raise DataspexError(f"train.engine={name!r} is not one of: {', '.join(ENGINES)}")
    return _TRAIN_MASKS[name]
