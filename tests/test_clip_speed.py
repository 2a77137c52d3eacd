"""Issue 29's CPU levers: depthwise convolutions kept in fp32 under bf16 autocast while they train,
and the text tower's dropout set by the config; plus the zero-shot validation on the cached prefix."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dermkit.runtime import keep_depthwise_fp32


def _net() -> nn.Sequential:
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
                         Conv2dSame(8, 8, 3, stride=2, groups=8),  # timm's "same" padding, depthwise
                         nn.Conv2d(8, 4, 3, groups=2),  # grouped, not depthwise: untouched
                         nn.Conv2d(4, 4, 1))


def test_keep_depthwise_fp32_changes_classes_only():
    net = _net()
    before = copy.deepcopy(net)
    assert keep_depthwise_fp32(net) == 2
    assert keep_depthwise_fp32(net) == 0  # idempotent
    assert [type(m).__name__ for m in net] == ["Conv2d", "Fp32DepthwiseConv2d", "Fp32DepthwiseConv2dSame",
                                               "Conv2d", "Conv2d"]
    assert isinstance(net[2], type(before[2]))  # a subclass of its own class: Conv2dSame's padding stays
    assert net.state_dict().keys() == before.state_dict().keys()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before(x), rtol=0, atol=0)  # fp32: the original forward
        with torch.autocast("cpu", dtype=torch.bfloat16):  # inference: bf16 as autocast has it
            torch.testing.assert_close(net(x), before(x), rtol=0, atol=0)
    copy.deepcopy(net)(x)  # a deep copy (the precision probe's) keeps working


def test_depthwise_runs_fp32_under_bf16_autocast_when_training():
    net = _net()
    ref = copy.deepcopy(net)
    keep_depthwise_fp32(net)
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref_out = net[1](x), ref[1](x)
    assert out.dtype == torch.float32 and ref_out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref[1](x), rtol=1e-6, atol=1e-6)  # what fp32 gives
    out.sum().backward()
    assert net[1].weight.grad is not None and net[1].weight.grad.dtype == torch.float32
    # A whole training step under autocast still flows (bf16 around, fp32 in the depthwise layers).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net(torch.randn(2, 3, 9, 9)).float().square().mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_engine_keeps_depthwise_fp32_on_cpu(tmp_path):
    from dermkit.engine.loop import Engine, EngineConfig

    engine = Engine(_net(), EngineConfig(epochs=1, precision="fp32"), tmp_path, progress=False)
    assert type(engine.module[1]).__name__ == "Fp32DepthwiseConv2d"


def test_set_dropout_sets_every_text_dropout():
    from transformers import BertConfig, BertModel

    from dermkit.methods.contrastive import set_dropout

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5))
    bert.train()
    ids = torch.randint(0, 50, (3, 7))
    assert not torch.equal(bert(ids).last_hidden_state, bert(ids).last_hidden_state)  # dropout is on
    assert set_dropout(bert, 0.0) >= 2 * 3
    assert all(m.p == 0.0 for m in bert.modules() if isinstance(m, nn.Dropout))
    train_out = bert(ids).last_hidden_state
    bert.eval()
    torch.testing.assert_close(train_out, bert(ids).last_hidden_state)  # training = inference without dropout


def test_shipped_clip_config_uses_the_levers():
    from dermkit.experiment import load_config
    from dermkit.methods.contrastive import ClipTrainConfig

    raw = load_config("configs/contrastive/dermkit_clip.yaml")
    config = ClipTrainConfig.from_dict({k: v for k, v in raw.items() if k not in ("method", "name", "_source")})
    assert config.text_dropout == 0.0 and config.cache_views == 4
    assert config.cache_captions == "epoch" and config.text_groups == 4


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_bad_text_dropout(value):
    from dermkit.errors import ConfigError
    from dermkit.methods.contrastive import ClipTrainConfig

    with pytest.raises(ConfigError, match="text_dropout"):
        ClipTrainConfig.from_dict({"train_data": ["ham10000"], "text_dropout": value}).validate()
