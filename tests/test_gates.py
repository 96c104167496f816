"""The tanh gate of Eq. 18: its start (`gate_bias_init`), the gradient its adapter gets, and its measured openness."""

import math

import pytest
import torch
from speeder_fixtures import item_inputs, tiny_model

from trainer.collator import ItemFeatureTable
from trainer.model_building import gate_openness


def _openness(model, inputs):
    encoder = model.model.item_encoder
    features = {m: inputs[f"{m}_features"] for m in ("text", "vision", "id")}
    return encoder.gate_openness(features, inputs["modality_mask"])


@pytest.mark.parametrize("bias", [0.0, 0.1, 0.5])
def test_a_tanh_gate_starts_at_tanh_of_its_bias(bias):
    model, _ = tiny_model(gate_type="tanh", gate_bias_init=bias)
    openness = _openness(model, item_inputs(30))
    assert set(openness) == {"vision", "id"}
    assert openness["vision"] == pytest.approx(math.tanh(bias), abs=1e-6)
    assert openness["id"] == pytest.approx(math.tanh(bias), abs=1e-6)


@pytest.mark.parametrize("bias, adapter_learns", [(0.0, False), (0.1, True)])
def test_only_an_open_start_sends_the_gated_adapter_a_gradient(bias, adapter_learns):
    model, _ = tiny_model(gate_type="tanh", gate_bias_init=bias)
    inputs = item_inputs(30, seed=1)
    model.model.encode_items(**inputs).pow(2).sum().backward()
    adapter_gradient = model.model.item_encoder.adapters["id"].weight.grad
    gate_gradient = model.model.item_encoder.gates["id"].weight.grad
    assert (adapter_gradient.abs().sum() > 0) == adapter_learns
    assert gate_gradient.abs().sum() > 0  # the gate itself learns from either start


def test_openness_leaves_out_absent_modalities_and_reads_a_trained_model():
    model, _ = tiny_model(gate_type="tanh", gate_bias_init=0.2)
    mask = torch.ones(30, 3, dtype=torch.bool)
    mask[:, 1] = False  # no item has an image
    assert set(_openness(model, item_inputs(30, modality_mask=mask))) == {"id"}
    features = ItemFeatureTable({m: item_inputs(30)[f"{m}_features"] for m in ("text", "vision", "id")},
                                {m: torch.ones(30, dtype=torch.bool) for m in ("text", "vision", "id")})
    peft_like = type("Wrapped", (), {"get_base_model": lambda self: model})()
    openness = gate_openness(peft_like, features, ("text", "id"), seed=0)
    assert openness == {"id": pytest.approx(math.tanh(0.2), abs=1e-6)}


def test_items_encode_in_full_precision_under_bf16_autocast():
    model, _ = tiny_model(gate_type="tanh", gate_bias_init=0.1)
    inputs = item_inputs(30, seed=2)
    expected = model.model.encode_items(**inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoded = model.model.encode_items(**inputs)
        outside_the_encoder = torch.nn.functional.linear(expected, torch.eye(expected.shape[1]))
    assert outside_the_encoder.dtype == torch.bfloat16  # autocast really is on around the encoder
    assert encoded.dtype == torch.float32
    torch.testing.assert_close(encoded, expected, rtol=0, atol=0)
