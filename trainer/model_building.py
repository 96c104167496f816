"""The Speeder model of a run: the backbone with the item encoder, aligned and wrapped with LoRA; gate readings."""

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import set_seed

from datasets_builder.build import pool_size
from modeling_speeder import ItemFeatureTable, SpeederSASRecRetriever
from modeling_speeder.backbones import build_speeder_model
from modeling_speeder.prompt_speeder import candidate_labels_for

from .arguments import SpeederArguments

MODULES_TO_SAVE = ["item_encoder", "history_position_embeddings", "user_projector"]
ALIGN_MAX_ITEMS = 8192  # items whose embeddings set the alignment statistics (a seeded sample of larger catalogues)


def build_model(args: SpeederArguments, features: ItemFeatureTable, seed: int, previous_adapter: Path | None,
                align_modalities: tuple[str, ...] = (), users: SpeederSASRecRetriever | None = None,
                align_histories: list[list[int]] = ()):
    """The Speeder model (seeded, so every stage rebuilds identical base weights) wrapped with LoRA; its prompt has one
    candidate label per candidate of the data's stored pools.

    A fresh model (no `previous_adapter`) with `align_modalities` has its item encoder's output aligned to the
    backbone's token embeddings on the items' features of those modalities (`--align_item_embeddings`), and with
    `--user_token` its user projector on the `users` features of `align_histories` (item indices)."""
    set_seed(seed)
    sizes = {f"{m}_feature_size": features.features[m].shape[1] for m in features.features}
    if args.user_token:
        if users is None:
            raise ValueError("--user_token needs the user encoder (`training_data.user_encoder`).")
        sizes["user_feature_size"] = users.config["hidden_size"]
    model, tokenizer = build_speeder_model(
        args.backbone,
        attn_implementation=args.attn_implementation,
        modalities=list(features.features),
        candidate_labels=candidate_labels_for(pool_size(args.data_dir)),
        **args.model_config_kwargs(),
        **sizes,
    )
    known = {name.split(".")[-1] for name, _ in model.model.language_model.named_modules()}
    unknown = [m for m in args.target_modules if m not in known]
    if unknown:
        linear = sorted({n.split(".")[-1] for n, m in model.model.language_model.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"lora_target_modules {unknown} are not in the backbone; its linear layers are {linear}.")
    if previous_adapter is not None:
        return PeftModel.from_pretrained(model, previous_adapter, is_trainable=True), tokenizer
    if args.align_item_embeddings and align_modalities:
        # before PEFT wraps it, so that the trainable copy of the encoder starts aligned
        usable = torch.stack([features.present[m] for m in align_modalities if m in features.present]).any(0)
        items = usable.nonzero().flatten()
        items = items[torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:ALIGN_MAX_ITEMS]]
        statistics = model.model.align_item_embeddings(**features.gather(items, align_modalities))
        print(f"Item embeddings aligned to the backbone's token embeddings on {len(items)} items: "
              f"scale {statistics['scale']:.3g}, token mean norm {statistics['token_mean_norm']:.3g}")
        if args.user_token and align_histories:
            statistics = model.model.align_user_embeddings(users.user_features(list(align_histories), by_row=True))
            print(f"User embeddings aligned on {len(align_histories)} histories: scale {statistics['scale']:.3g}")
    modules_to_save = [m for m in MODULES_TO_SAVE if getattr(model.model, m, None) is not None]
    lora = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=args.target_modules, modules_to_save=modules_to_save, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), tokenizer


def gate_openness(model, features: ItemFeatureTable, modalities: tuple[str, ...], seed: int) -> dict[str, float]:
    """Mean gate value per gated modality of the stage (0 = shut, 1 = open), over a seeded sample of the items."""
    encoder = model.get_base_model().model.item_encoder
    items = torch.randperm(features.num_items, generator=torch.Generator().manual_seed(seed))[:ALIGN_MAX_ITEMS]
    inputs = features.gather(items, modalities)
    parameter = next(encoder.parameters())
    features_in = {m: inputs[f"{m}_features"].to(parameter.device) for m in modalities if f"{m}_features" in inputs}
    return encoder.gate_openness(features_in, inputs["modality_mask"].to(parameter.device))

