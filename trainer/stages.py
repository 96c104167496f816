"""Modality-aware Progressive Optimization: the stage table as data, and the one function that applies a stage."""

import hashlib
import re
from dataclasses import dataclass

import torch
from torch import nn

# Trainable groups of the item encoder, by parameter-name pattern. LoRA, the PPL table and the user token's projector
# train in every stage.
PARAMETER_GROUPS = {
    "text_adapter": r"\.adapters\.text\.",
    "vision_adapter": r"\.adapters\.vision\.",
    "id_adapter": r"\.adapters\.id\.",
    "vision_gate": r"\.gates\.vision\.",
    "id_gate": r"\.gates\.id\.",
    "text_expert": r"\.experts\.text\.",
    "vision_expert": r"\.experts\.vision\.",
    "id_expert": r"\.experts\.id\.",
    "multimodal_expert": r"\.experts\.multimodal\.",
    "attention": r"\.layers\.\d+\.(attention|attention_norm|expert_norm)\.",
    "output_adapter": r"\.output_adapter\.",
}
ALWAYS_TRAINABLE = r"(lora_|history_position_embeddings|user_projector)"


@dataclass(frozen=True)
class Stage:
    """One MPO stage: which modalities its data carries and which item-encoder groups it trains."""

    number: int
    name: str
    modalities: tuple[str, ...]
    trainable: tuple[str, ...]


STAGES = {
    1: Stage(1, "compressed text and task comprehension", ("text",), ("text_adapter", "text_expert", "output_adapter")),
    2: Stage(
        2,
        "preliminary multimodal understanding",
        ("text", "vision"),
        ("text_adapter", "vision_adapter", "vision_gate", "text_expert", "vision_expert", "multimodal_expert",
         "attention", "output_adapter"),
    ),
    3: Stage(3, "unified multimodal optimization", ("text", "vision", "id"), tuple(PARAMETER_GROUPS)),
}


def introduced_modalities(stage: Stage) -> tuple[str, ...]:
    """The modalities `stage` adds to the previous stage of the table (stage 1: text, 2: vision, 3: id)."""
    previous = STAGES.get(stage.number - 1)
    return tuple(m for m in stage.modalities if previous is None or m not in previous.modalities)


def parse_stages(value: str) -> list[int]:
    """'1,2,3' → [1, 2, 3]; raises ValueError on unknown or unordered stage numbers."""
    try:
        numbers = [int(part) for part in str(value).split(",") if part.strip()]
    except ValueError:
        numbers = []
    if not numbers or any(n not in STAGES for n in numbers) or numbers != sorted(set(numbers)):
        raise ValueError(f"stages must be increasing, comma-separated numbers from {sorted(STAGES)}, got {value!r}.")
    return numbers


def parse_stage_epochs(value: str) -> dict[int, float]:
    """'1=0.15,3=1' → {1: 0.15, 3: 1.0}: epochs of the named stages; raises ValueError on a bad entry."""
    epochs = {}
    for part in filter(None, (p.strip() for p in str(value or "").split(","))):
        stage, _, count = part.partition("=")
        try:
            number, count = int(stage), float(count)
        except ValueError:
            number, count = None, 0.0
        if number not in STAGES or not count > 0:
            raise ValueError(f"stage_epochs entries are STAGE=EPOCHS with a stage from {sorted(STAGES)} and epochs > 0, "
                             f"e.g. '1=0.15,3=1'; got {part!r}.")
        epochs[number] = count
    return epochs


def apply_stage(model: nn.Module, stage: Stage) -> list[str]:
    """Sets `requires_grad` for `stage` on a PEFT-wrapped Speeder model; returns the trainable parameter names.

    The item encoder and the PPL table are PEFT `modules_to_save` (so the adapter saves them); only their trainable
    copies can train, never the frozen originals or the backbone.
    """
    patterns = [re.compile(PARAMETER_GROUPS[group]) for group in stage.trainable]
    always = re.compile(ALWAYS_TRAINABLE)
    trainable = []
    for name, parameter in model.named_parameters():
        is_copy = "original_module" not in name
        in_encoder = ".item_encoder." in name and ".modules_to_save." in name
        train = is_copy and (
            (in_encoder and any(p.search(name) for p in patterns))
            or (always.search(name) is not None and (".modules_to_save." in name or "lora_" in name))
        )
        parameter.requires_grad_(train)
        if train:
            trainable.append(name)
    return trainable


def frozen_fingerprints(model: nn.Module) -> dict[str, str]:
    """A bit-exact digest of every frozen tensor, to prove a stage left them untouched."""
    digests = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            data = parameter.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy()
            digests[name] = hashlib.blake2b(data, digest_size=16).hexdigest()
    return digests


def check_frozen_unchanged(before: dict[str, str], after: dict[str, str]) -> None:
    """Raises RuntimeError naming the frozen tensors whose bits changed."""
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    if changed:
        raise RuntimeError(f"{len(changed)} frozen tensors changed during the stage, e.g. {changed[:5]}.")
