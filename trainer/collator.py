"""Deprecated: `modeling_speeder.SpeederProcessor` turns stored rows into model inputs. Build the collator with
`SpeederProcessor.from_model_config(model.config, tokenizer).with_items(features, modalities)`."""

import warnings

from modeling_speeder.processing_speeder import IGNORE_INDEX, ItemFeatureTable, SpeederProcessor


def SpeederCollator(prompt_builder, item_features: ItemFeatureTable, modalities, max_history: int,  # noqa: N802
                    with_answer: bool = True, padding_side: str = "right") -> SpeederProcessor:
    """Deprecated: the processor bound to `item_features`, as `SpeederProcessor(...).with_items(...)` builds it."""
    warnings.warn(
        "SpeederCollator is deprecated: use SpeederProcessor.from_model_config(model.config, tokenizer)"
        ".with_items(features, modalities).", DeprecationWarning, stacklevel=2,
    )
    processor = SpeederProcessor(prompt_builder.tokenizer, list(prompt_builder.candidate_labels),
                                 prompt_builder.history_indices, max_history)
    return processor.with_items(item_features, modalities, with_answer=with_answer, padding_side=padding_side)


__all__ = ["IGNORE_INDEX", "ItemFeatureTable", "SpeederCollator"]
