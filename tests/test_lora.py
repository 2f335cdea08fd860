import pytest
import torch

from bigmodel_course.lora import ALL_LINEAR_MODULES, lora_model, merge_lora, trainable_share
from bigmodel_course.transformer import GPT, GPTConfig

pytestmark = pytest.mark.unit


def course_sized_gpt():
    """The shape of the Chapter 2 GPT (4 layers, width 128, a 4,748-token chat vocabulary), random weights."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=4748, max_len=128, d_model=128, n_heads=4, n_layers=4, dropout=0.0,
                         attn_dropout=0.0, activation="gelu_tanh")).eval()


def perturb_adapters(peft_model, seed=1):
    """Give every LoRA B a non-zero value (it starts at zero), as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_only_the_adapters_train_and_they_are_a_small_share():
    model = course_sized_gpt()
    peft_model = lora_model(model, rank=8)
    trainable, total = trainable_share(peft_model)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert trainable == 4 * 8 * (128 + 3 * 128) and trainable / total < 0.05  # A: r × 128, B: 384 × r per layer
    wide = lora_model(model, rank=8, target_modules=ALL_LINEAR_MODULES)
    assert trainable_share(wide)[0] == 4 * 8 * ((128 + 384) + (128 + 128) + (128 + 512) + (512 + 128))
    with pytest.raises(ValueError, match="target_modules must be some of"):
        lora_model(model, target_modules=["wte"])
    with pytest.raises(ValueError, match="rank must be a positive int"):
        lora_model(model, rank=0)


def test_a_fresh_adapter_changes_nothing_and_a_merged_one_gives_the_same_logits():
    model = course_sized_gpt()
    x = torch.randint(0, 4748, (2, 20))
    peft_model = lora_model(model, rank=4, target_modules=ALL_LINEAR_MODULES).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=x).logits, model(x).logits, atol=1e-4, rtol=1e-4)
        perturb_adapters(peft_model)
        adapted = peft_model(input_ids=x).logits
        assert (adapted - model(x).logits).abs().max() > 1e-2  # the adapters now matter
        merged = merge_lora(peft_model).eval()
        assert isinstance(merged, GPT)
        torch.testing.assert_close(merged(x).logits, adapted, atol=1e-4, rtol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), course_sized_gpt().state_dict().values()))


def test_trainable_tokens_learn_their_rows_in_and_out_and_merge_back():
    model = course_sized_gpt()
    new = [4743, 4744, 4745, 4746, 4747]  # the chat tokens' ids at the end of the vocabulary
    peft_model = lora_model(model, rank=4, trainable_tokens=new).eval()
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("trainable_tokens" in n for n in names) and all("lora_" in n or "trainable_tokens" in n for n in names)
    assert trainable_share(peft_model)[0] == 4 * 4 * (128 + 384) + len(new) * 128
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "trainable_tokens" in n:
                p.add_(torch.randn_like(p))
        x = torch.tensor([[5, 4744, 9, 4747]])
        adapted = peft_model(input_ids=x).logits
        base = model(x).logits
        assert (adapted[0, 0, new] - base[0, 0, new]).abs().min() > 1e-3  # output rows of the new tokens moved
        assert torch.allclose(adapted[0, 0, :4743], base[0, 0, :4743], atol=1e-5)  # same input, old rows unchanged
        perturb_adapters(peft_model)
        adapted = peft_model(input_ids=x).logits
        merged = merge_lora(peft_model).eval()
        torch.testing.assert_close(merged(x).logits, adapted, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="trainable_tokens must be token ids"):
        lora_model(model, trainable_tokens=[4748])
