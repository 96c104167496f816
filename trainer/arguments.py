"""Command-line / YAML arguments of `trainer/run.py`: Speeder's own, and TRL's `SFTConfig` with CPU-safe defaults."""

import platform
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from trl import SFTConfig

from modeling_speeder import GATE_TYPES, MODALITIES, SpeederConfig
from modeling_speeder.backbones import NAMED_BACKBONES

from .stages import parse_stage_epochs, parse_stages

# Table 3 of the paper: each ablation is a set of argument values, nothing else.
ABLATIONS = {
    "none": {},
    "wo_ppt": {"ppt_per_sequence": 0.0},
    "wo_ppl": {"use_history_positions": False},
    "wo_spae": {"ppt_per_sequence": 0.0, "use_history_positions": False},
    "wo_stage1": {"stages": "2,3"},
    "wo_stages12": {"stages": "3"},
    "wo_text": {"drop_modalities": "text"},
    "wo_vision": {"drop_modalities": "vision"},
    "wo_id": {"drop_modalities": "id"},
    "gate_relu": {"gate_type": "relu"},
    "gate_none": {"gate_type": "none"},
}
# Ablations that start a later stage without its predecessor (the others need the previous stage's weights).
STAGE_SKIPPING_ABLATIONS = ("wo_stage1", "wo_stages12")
# SpeederArguments field -> the SpeederConfig field it sets; the defaults are SpeederConfig's.
MODEL_CONFIG_FIELDS = {
    "max_history": "max_history_length",
    "use_history_positions": "use_history_positions",
    "history_indices": "history_indices",
    "gate_type": "gate_type",
    "gate_bias_init": "gate_bias_init",
    "user_token": "user_token",
    "fusion_hidden_size": "fusion_hidden_size",
    "fusion_num_attention_heads": "fusion_num_attention_heads",
    "fusion_intermediate_size": "fusion_intermediate_size",
    "num_modality_expert_layers": "num_modality_expert_layers",
    "num_multimodal_expert_layers": "num_multimodal_expert_layers",
}


@dataclass
class SpeederArguments:
    """Speeder's training arguments; `SFTConfig` holds the optimiser, batch, epochs, logging and saving."""

    data_dir: str = field(metadata={"help": "Output folder of `python -m datasets_builder`."})
    backbone: str = field(
        default="tiny", metadata={"help": f"One of {list(NAMED_BACKBONES)}, a local causal-LM folder or a Hub id."}
    )
    stages: str = field(default="1,2,3", metadata={"help": "MPO stages to run, e.g. '1,2,3' or '2,3'."})
    stage_epochs: str = field(
        default="", metadata={"help": "Per-stage num_train_epochs, e.g. '1=0.15,3=1'; other stages use num_train_epochs."}
    )
    ablation: str = field(default="none", metadata={"help": f"One of {list(ABLATIONS)} (paper Table 3)."})
    drop_modalities: str = field(default="", metadata={"help": "Comma-separated modalities whose data is left out."})
    max_history: int = field(
        default=SpeederConfig.max_history_length,
        metadata={"help": "Most recent history items in a prompt (PPL rows); build the data with the same config "
                          "(`python -m datasets_builder ... --config CONFIG`)."},
    )
    ppt_per_sequence: float = field(
        default=1.0, metadata={"help": "PPT samples mixed in per training sequence (0 disables PPT)."}
    )
    use_history_positions: bool = field(
        default=SpeederConfig.use_history_positions, metadata={"help": "Position Prompt Learning (PPL)."}
    )
    history_indices: bool = field(
        default=SpeederConfig.history_indices,
        metadata={"help": "Write each history item's index before its <item> token (the paper's prompt); false "
                          "writes one <item> token per history item, its order carried by PPL alone."},
    )
    gate_type: str = field(default=SpeederConfig.gate_type, metadata={"help": f"One of {list(GATE_TYPES)}."})
    gate_bias_init: float = field(
        default=SpeederConfig.gate_bias_init,
        metadata={"help": "Start value of each tanh gate's bias (its weight starts at 0): 0 is the paper's closed "
                          "gate; a positive value passes tanh(b) of the gated modality from the first step."},
    )
    user_token: bool = field(
        default=SpeederConfig.user_token,
        metadata={"help": "Start each prompt with a <user> soft token: the state of SASRec (trained as the ID "
                          "features were) after the history, projected to the backbone's width (A-LLMRec's user "
                          "token; not in the paper)."},
    )
    fusion_hidden_size: int = SpeederConfig.fusion_hidden_size
    fusion_num_attention_heads: int = SpeederConfig.fusion_num_attention_heads
    fusion_intermediate_size: int = SpeederConfig.fusion_intermediate_size
    num_modality_expert_layers: int = SpeederConfig.num_modality_expert_layers
    num_multimodal_expert_layers: int = SpeederConfig.num_multimodal_expert_layers
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "The backbone's attention kernel: eager, sdpa, flash_attention_2, ... (default: "
                          "transformers' choice). On a CPU with bf16, eager is faster than sdpa for prompts this short."},
    )
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str = field(default="q_proj,v_proj", metadata={"help": "Comma-separated module names."})
    item_encoder_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak LR of the item encoder (but its gates) and the PPL table (default: learning_rate / "
                          "10; LoRA and the gates get learning_rate). A fresh encoder at the LoRA rate scrambles the "
                          "item geometry the backbone reads before LoRA learns to use it."},
    )
    align_item_embeddings: bool = field(
        default=True,
        metadata={"help": "Before a fresh first stage, scale and shift the item encoder's output to the backbone's "
                          "token-embedding mean and variance (see SpeederModel.align_item_embeddings)."},
    )
    prefix_min_history: int = field(
        default=0,
        metadata={"help": "Also train on the prefixes of each training row's history: its item k becomes a target of "
                          "the k items before it, for k >= this value, with the row's stored negatives as the other "
                          "candidates (as SASRec trains on every position of the same windows); 0 = off."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap on recommendation samples per stage."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap on valid/test samples evaluated."})
    eval_batch_size: int = 16
    eval_generate: bool = field(default=True, metadata={"help": "Measure ValidRatio by free generation."})
    resume: bool = field(default=False, metadata={"help": "Continue an interrupted stage from its last checkpoint."})
    init_adapter: str | None = field(
        default=None,
        metadata={"help": "A finished stage's adapter folder (RUN_DIR/stageN/adapter) that the first stage this run "
                          "trains starts from instead of fresh weights, e.g. a model trained on 5-candidate pools "
                          "trained further on retrieved pools of 20 (`--stages 3`)."},
    )

    def model_config_kwargs(self) -> dict:
        """The `SpeederConfig` fields these arguments set (`MODEL_CONFIG_FIELDS`)."""
        return {config_name: getattr(self, name) for name, config_name in MODEL_CONFIG_FIELDS.items()}

    def resolved(self) -> "SpeederArguments":
        """Applies the ablation's values and validates everything; raises ValueError naming the bad value."""
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {list(ABLATIONS)}, got {self.ablation!r}.")
        for name, value in ABLATIONS[self.ablation].items():
            setattr(self, name, value)
        parse_stages(self.stages)
        parse_stage_epochs(self.stage_epochs)
        unknown = set(self.dropped_modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"drop_modalities must name modalities from {list(MODALITIES)}, got {sorted(unknown)}.")
        if self.gate_type not in GATE_TYPES:
            raise ValueError(f"gate_type must be one of {list(GATE_TYPES)}, got {self.gate_type!r}.")
        if self.ppt_per_sequence < 0:
            raise ValueError(f"ppt_per_sequence must be >= 0, got {self.ppt_per_sequence}.")
        if self.item_encoder_learning_rate is not None and self.item_encoder_learning_rate < 0:
            raise ValueError(f"item_encoder_learning_rate must be >= 0, got {self.item_encoder_learning_rate}.")
        if self.prefix_min_history < 0:
            raise ValueError(f"prefix_min_history must be >= 0 (0 = off), got {self.prefix_min_history}.")
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}.")
        if self.init_adapter is not None and not (Path(self.init_adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"init_adapter {self.init_adapter} holds no adapter_config.json: give a finished "
                                    "stage's adapter folder, RUN_DIR/stageN/adapter.")
        return self

    @property
    def stage_numbers(self) -> list[int]:
        return parse_stages(self.stages)

    @property
    def dropped_modalities(self) -> list[str]:
        return [m.strip() for m in self.drop_modalities.split(",") if m.strip()]

    @property
    def target_modules(self) -> list[str]:
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


BF16_INSTRUCTIONS = {"AMX": "_is_amx_tile_supported", "AVX512-BF16": "_is_avx512_bf16_supported"}  # torch.cpu checks


def cpu_bf16_instructions() -> dict[str, bool]:
    """Which instruction sets that multiply bf16 in hardware this CPU has, e.g. {"AMX": False, "AVX512-BF16": True}."""
    checks = {name: getattr(torch.cpu, check, None) for name, check in BF16_INSTRUCTIONS.items()}
    return {name: bool(check is not None and check()) for name, check in checks.items()}


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AMX or AVX512-BF16); without either, bf16 is emulated and
    slower than fp32."""
    return any(cpu_bf16_instructions().values())


def machine_description() -> str:
    """CPU model, logical CPUs torch uses, and its bf16 instructions: what a wall time depends on."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    instructions = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in cpu_bf16_instructions().items())
    return f"{model}, {torch.get_num_threads()} torch threads, {instructions}, {gpu}, torch {torch.__version__}"


@dataclass
class SpeederSFTConfig(SFTConfig):
    """`SFTConfig` with the settings a custom collator needs and defaults that run on a CPU."""

    remove_unused_columns: bool = False
    dataset_kwargs: dict | str | None = field(default_factory=lambda: {"skip_prepare_dataset": True})
    report_to: str | list[str] = "tensorboard"
    warmup_steps: float = 0.1
    # A checkpoint every 100 steps (~5 minutes of a 2-core CPU) bounds what an interrupted stage loses; `--resume`
    # continues from the last one.
    save_strategy: str = "steps"
    save_steps: float = 100
    # TRL turns activation checkpointing on by default (~30% slower steps); Speeder's prompts are short, so it is
    # off unless asked for (configs/paper.yaml asks, for a 7B backbone). `gradient_checkpointing` is its old name.
    activation_checkpointing: bool | None = False
    gradient_checkpointing: bool | None = None
    save_total_limit: int | None = 2
    # No gradient clipping (the paper names none): the freshly initialised item encoder gives gradient norms of ~30,
    # and transformers' default clip at 1.0 kept MovieLens valid HR@1 at chance for hundreds of steps; without it,
    # the same run reached 0.44 in 160 steps.
    max_grad_norm: float = 0.0
    # An absent modality's expert gets no gradient in a step (hard routing), which DDP must be told to expect.
    ddp_find_unused_parameters: bool | None = True

    def __post_init__(self):
        if not torch.cuda.is_available():
            # bf16 autocast where the CPU multiplies bf16 in hardware (AMX or AVX512-BF16), else fp32
            self.bf16 = cpu_has_native_bf16() if self.bf16 is None else self.bf16
            self.use_cpu = self.use_cpu or bool(self.bf16)  # transformers takes bf16 without a GPU only with use_cpu
            self.dataloader_pin_memory = False
        super().__post_init__()
