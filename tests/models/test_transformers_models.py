"""transformers models from configs with random weights (no download), through both entry
points, against eager PyTorch:

* a tiny ``LlamaForCausalLM`` (hidden 64, 2 layers, GQA, a padded batch with ignored
  labels): logits, loss and the gradient of every parameter, against eager fp32 and a
  float64 copy; the fused kernel counts, so a fall back to "nothing fused" fails;
* a 5-step AdamW loop on it: the loss at every step and the final parameters;
* a sigmoid-gated block from transformers, Qwen3-Next's gated attention
  (``attn_output * sigmoid(gate)`` before ``o_proj``, with its RMSNorms and partial
  rotary embedding): output and gradients, and the sigmoid gate fused forward and backward.
"""
from __future__ import annotations

import pytest
import torch
import transformers  # the test extras install it: a missing install fails here, it is not skipped
from torch import nn

from _common import (
    ENTRIES,
    assert_fused,
    assert_grads_like_eager,
    assert_like_eager,
    assert_state_like_eager,
    compile_with,
    seeded,
    to64,
    twins,
)

pytestmark = pytest.mark.cpu_only  # CPU tensors (interpreter kernels), as tests/test_dynamo_backend.py

VOCAB, HIDDEN, LAYERS, BATCH, SEQ = 128, 64, 2, 2, 8


def tiny_llama() -> nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4 * SEQ, use_cache=False,
        tie_word_embeddings=False, attn_implementation="sdpa")  # sdpa: transformers' default on CPU
    return transformers.LlamaForCausalLM(cfg)  # post_init: random normal(0, 0.02) weights


def llama_batch() -> dict:
    """A padded batch: the second sequence's last two tokens are padding (masked out of
    attention, label -100 so the loss ignores them), as a real training batch has."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, -2:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# Fused kernels the Llama's forward must have once everything fuses, counted from its
# structure so that only kernels that cannot merge with one another are counted:
#   5 RMSNorms (2 per layer + the final one): each scale-and-weight chain sits between the
#     mean of squares (a reduction) and a matmul, so each is its own kernel;
#   2 MLP gates silu(gate_proj(x)) * up_proj(x) (one per layer), between two matmuls;
#   2 rotary embeddings (one per layer at least: q and k may share one), between the
#     q/k projections and attention, a kernel or a projection's epilogue.
# Residual adds, the o_proj/down_proj epilogues and cos/sin may add more.
LLAMA_MIN_FORWARD = 5 + 2 + 2
# backward: the RMSNorm and MLP-gate kernels each have a backward kernel (the rotary
# gradient may become part of the q/k projection gradients)
LLAMA_MIN_BACKWARD = 5 + 2


@pytest.mark.parametrize("entry", ENTRIES)
def test_llama_forward_and_backward_match_eager(entry):
    model, eager, ref64 = twins(seeded(tiny_llama))
    compiled = compile_with(entry, model)
    batch = llama_batch()

    out, want, ref = compiled(**batch), eager(**batch), ref64(**batch)
    assert_like_eager("logits", out.logits, want.logits, ref.logits)
    assert_like_eager("loss", out.loss, want.loss, ref.loss)

    out.loss.backward()
    want.loss.backward()
    ref.loss.backward()
    assert_grads_like_eager(model, eager, ref64)

    assert_fused(entry, compiled, (), batch, forward=LLAMA_MIN_FORWARD, backward=LLAMA_MIN_BACKWARD)


@pytest.mark.parametrize("entry", ENTRIES)
def test_llama_adamw_five_steps_match_eager(entry):
    model, eager, ref64 = twins(seeded(tiny_llama))
    compiled = compile_with(entry, model)
    batch = llama_batch()

    def adamw(m):
        return torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1)

    opts = [adamw(m) for m in (model, eager, ref64)]
    losses = []
    for step in range(5):
        outs = []
        for m, opt in zip((compiled, eager, ref64), opts):
            opt.zero_grad()
            loss = m(**batch).loss
            loss.backward()
            opt.step()
            outs.append(loss.detach())
        assert_like_eager(f"loss at step {step}", *outs)
        losses.append(outs[1].item())
    assert losses[-1] < losses[0], f"eager does not learn: {losses}"  # the loop does something
    assert_state_like_eager(model, eager, ref64, what="after 5 AdamW steps:")

    assert_fused(entry, compiled, (), batch, forward=LLAMA_MIN_FORWARD, backward=LLAMA_MIN_BACKWARD)


# ---- a sigmoid-gated block: Qwen3-Next's gated attention ---------------------------------
class GatedAttentionLayer(nn.Module):
    """transformers' ``Qwen3NextAttention`` with its rotary embedding, called as the decoder
    layer calls it: ``o_proj(attention(...) * sigmoid(gate))``, the gate being the second
    half of q_proj's output."""

    def __init__(self):
        super().__init__()
        from transformers.models.qwen3_next import modeling_qwen3_next as q3n
        cfg = transformers.Qwen3NextConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            num_hidden_layers=1, layer_types=["full_attention"], max_position_embeddings=4 * SEQ,
            attn_implementation="sdpa")
        self.rotary = q3n.Qwen3NextRotaryEmbedding(cfg)
        self.attn = q3n.Qwen3NextAttention(cfg, layer_idx=0)
        with torch.no_grad():  # the norms start at zero ("1 + weight"): make them matter
            for norm in (self.attn.q_norm, self.attn.k_norm):
                norm.weight.normal_(0, 0.5)

    def forward(self, x):
        positions = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        cos_sin = self.rotary(x, positions)
        out, _ = self.attn(x, position_embeddings=cos_sin, attention_mask=None)
        return out


# forward kernels once everything fuses: q_norm (+ rotary), k_norm (+ rotary), each after
# its own mean of squares, and the sigmoid gate attn_output * sigmoid(gate) between
# attention and o_proj; the gate's backward kernel
GATED_MIN_FORWARD, GATED_MIN_BACKWARD = 3, 1


@pytest.mark.parametrize("entry", ENTRIES)
def test_gated_attention_block_matches_eager(entry):
    model, eager, ref64 = twins(seeded(GatedAttentionLayer))
    compiled = compile_with(entry, model)
    x = torch.randn(BATCH, SEQ, HIDDEN, generator=torch.Generator().manual_seed(2), requires_grad=True)
    x_eager, x64 = x.detach().clone().requires_grad_(), to64(x)

    out, want, ref = compiled(x), eager(x_eager), ref64(x64)
    assert_like_eager("output", out, want, ref)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    out.backward(grad_out)
    want.backward(grad_out)
    ref.backward(grad_out.double())
    assert_like_eager("grad of x", x.grad, x_eager.grad, x64.grad)
    assert_grads_like_eager(model, eager, ref64)

    assert_fused(entry, compiled, (x,), forward=GATED_MIN_FORWARD, backward=GATED_MIN_BACKWARD,
                 containing=("sigmoid",))
