"""A zoo of small models that exercise every coupling net2net must infer, with helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .transformer_zoo import (
    GPT,
    LLAMA_PRESETS,
    TORCH_PRESETS,
    GPTConfig,
    LayerNorm,
    Llama,
    RMSNorm,
)


class BasicBlock(nn.Module):
    """ResNet basic block; a projection shortcut when the shape changes. ``relu`` is called twice,
    as in torchvision."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class Inception(nn.Module):
    """Concatenated branches (offsets!), a BatchNorm over the concatenation, then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.b2 = nn.Sequential(
            nn.Conv2d(6, 3, 1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Conv2d(3, 5, 3, padding=1),
            nn.BatchNorm2d(5),
            nn.ReLU(),
        )
        self.b3 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(6, 2, 1), nn.ReLU())
        self.mix_bn = nn.BatchNorm2d(11)
        self.mix = nn.Conv2d(11, 7, 1)
        self.head = nn.Linear(7 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.cat([self.b1(x), self.b2(x), self.b3(x)], dim=1)
        y = F.relu(self.mix(self.mix_bn(y)))
        y = F.max_pool2d(y, 2)
        return self.head(y.view(y.size(0), -1))


class DenseNet(nn.Module):
    """DenseNet-style growing concatenation with pre-activation BN over the concatenations."""

    def __init__(self, c0: int = 6, growth: int = 4, layers: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c0, 3, padding=1)
        self.layers = nn.ModuleList()
        c = c0
        for _ in range(layers):
            self.layers.append(
                nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, padding=1))
            )
            c += growth
        self.transition = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 8, 1))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        x = F.avg_pool2d(self.transition(x), 2)
        return self.head(x.mean(dim=(2, 3)))


def depthwise_separable() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 12, 1),  # pointwise
        nn.BatchNorm2d(12),
        nn.Hardswish(),
        nn.Conv2d(12, 12, 3, padding=1, groups=12),
        nn.BatchNorm2d(12),
        nn.ReLU6(),
        nn.Conv2d(12, 16, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


class PreLNBlock(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class PreLNMLP(nn.Module):
    def __init__(self, d_in: int = 6, d: int = 8, hidden: int = 12, out: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.blocks = nn.Sequential(PreLNBlock(d, hidden), PreLNBlock(d, hidden))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(x))))


def mlp_bn() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(16, 12),
        nn.BatchNorm1d(12),
        nn.ReLU(),
        nn.Linear(12, 4),
    )


def cnn_flatten() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 4 * 4, 10),
    )


def mlp_acts() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 10),
        nn.GELU(),
        nn.Linear(10, 9),
        nn.SiLU(),
        nn.Linear(9, 7),
        nn.Tanh(),
        nn.Linear(7, 3),
    )


def cnn_acts() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.SiLU(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.GELU(),
        nn.AvgPool2d(2),
        nn.Conv2d(5, 7, 3, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(7 * 2 * 2, 4),
    )


class GatedConv1d(nn.Module):
    """Conv1d, an elementwise gate (mul couples its operands), a subtraction, channels-last
    Linear after a transpose, and an Embedding producer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.conv = nn.Conv1d(6, 8, 3, padding=1)
        self.gate = nn.Conv1d(6, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.proj = nn.Linear(8, 5)
        self.act = nn.LeakyReLU(0.1)
        self.head = nn.Linear(5, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).transpose(1, 2)  # (B, E, T)
        h = self.bn(self.conv(x) * torch.sigmoid(self.gate(x)))
        h = h - 0.5 * torch.tanh(h)  # a subtraction of coupled tensors
        z = self.act(self.proj(h.transpose(1, 2)))  # (B, T, 5)
        return self.head(z.mean(dim=1))


def grouped_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, groups=4),  # grouped, not depthwise
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.Conv2d(12, 6, 1, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 6 * 6, 3),
    )


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    make_input: Callable[[torch.Generator], torch.Tensor]
    deepen_after: str  # a position where identity deepening is exact
    residual_after: str  # a position for style="residual"
    notes: list[str] = field(default_factory=list)


def _img(c: int, hw: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randn(4, c, hw, hw, generator=g)


def _vec(d: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randn(8, d, generator=g)


def _padded_tokens(g: torch.Generator) -> torch.Tensor:
    """Token ids 1..39 with padding (id 0) at the end of the first sequence."""
    idx = torch.randint(1, 40, (3, 12), generator=g)
    idx[0, 8:] = 0
    return idx


_TORCH_DEEPEN = {  # (identity-exact position, residual position) per model of torch's modules
    "TorchMHALM": ("blocks.0.fc", "blocks.1.proj"),
    "EncoderClassifier": ("tok", "tok"),  # inside the layers, the fast path reads linear1.weight
    "Seq2Seq": ("dec.linear1", "dec.linear2"),
}


ZOO: list[Case] = [
    Case("mlp_bn", mlp_bn, _vec(6), deepen_after="2", residual_after="4"),
    Case("cnn_flatten", cnn_flatten, _img(3, 8), deepen_after="2", residual_after="6"),
    Case("inception", Inception, _img(3, 8), deepen_after="b2.2", residual_after="b1"),
    Case("resnet", ResNet, _img(3, 8), deepen_after="layer1.0", residual_after="layer2"),
    Case("densenet", DenseNet, _img(3, 8), deepen_after="layers.0.1", residual_after="stem"),
    Case("depthwise", depthwise_separable, _img(3, 6), deepen_after="5", residual_after="8"),
    Case("preln_mlp", PreLNMLP, _vec(6), deepen_after="blocks.0", residual_after="blocks.0.act"),
    Case("mlp_acts", mlp_acts, _vec(6), deepen_after="2", residual_after="3"),
    Case("cnn_acts", cnn_acts, _img(3, 8), deepen_after="0", residual_after="4"),
    Case(
        "gated_conv1d",
        GatedConv1d,
        lambda g: torch.randint(0, 20, (4, 7), generator=g),
        deepen_after="bn",
        residual_after="act",
    ),
    Case("grouped_cnn", grouped_cnn, _img(3, 6), deepen_after="1", residual_after="4"),
    Case(
        "gpt",
        GPT,
        lambda g: torch.randint(0, 65, (3, 16), generator=g),
        deepen_after="transformer.h.0.mlp.c_fc",
        residual_after="transformer.h.1.mlp.gelu",
    ),
    Case(
        "gpt_manual_attention",
        lambda: GPT(GPTConfig(attention="manual")),
        lambda g: torch.randint(0, 65, (2, 12), generator=g),
        deepen_after="transformer.h.1.attn.c_proj",
        residual_after="transformer.h.0.mlp.gelu",
    ),
    *(
        Case(
            name,
            lambda cfg=cfg: Llama(cfg),
            lambda g: torch.randint(0, 48, (2, 12), generator=g),
            deepen_after="layers.0.attn.o_proj",
            residual_after="layers.1.ffn",
        )
        for name, cfg in LLAMA_PRESETS.items()
    ),
    *(
        Case(
            name,
            lambda build=build, cfg=cfg: build(cfg),
            _padded_tokens,
            deepen_after=_TORCH_DEEPEN[build.__name__][0],
            residual_after=_TORCH_DEEPEN[build.__name__][1],
        )
        for name, (build, cfg) in TORCH_PRESETS.items()
    ),
    Case(
        "gpt_nanogpt_code",
        lambda: GPT(GPTConfig(attention="nanogpt")),
        lambda g: torch.randint(0, 65, (2, 16), generator=g),
        deepen_after="transformer.h.0.mlp.c_fc",
        residual_after="transformer.h.0.mlp.gelu",
    ),
]


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm non-default affine parameters and running statistics (in place)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        with torch.no_grad():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                n = m.num_features
                if m.running_mean is not None and m.running_var is not None:
                    m.running_mean.copy_(0.5 * torch.randn(n, generator=g))
                    m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                if m.weight is not None:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(0.3 * torch.randn(n, generator=g))
            elif isinstance(m, (nn.LayerNorm, LayerNorm)) and m.weight is not None:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                if m.bias is not None:
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, (nn.RMSNorm, RMSNorm)) and m.weight is not None:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
    return model


def build(case: Case, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = randomize_norms(case.build(), seed)
    x = case.make_input(torch.Generator().manual_seed(seed + 1))
    return model, x


def snapshot(model: nn.Module) -> dict[str, object]:
    """Everything about a model that growth must not change."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "params": [id(p) for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "repr": repr(model),
    }


def assert_unchanged(model: nn.Module, snap: dict[str, object]) -> None:
    now = snapshot(model)
    assert now["repr"] == snap["repr"]
    assert now["params"] == snap["params"]
    assert now["training"] == snap["training"]
    before = snap["state"]
    after = now["state"]
    assert isinstance(before, dict) and isinstance(after, dict)
    assert before.keys() == after.keys()
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)


def max_err(a: nn.Module, b: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max |teacher|) in eval mode; training flags restored."""
    fa, fb = a.training, b.training
    a.eval()
    b.eval()
    with torch.no_grad():
        ya, yb = a(x), b(x)
    a.train(fa)
    b.train(fb)
    return float((ya - yb).abs().max()), float(ya.abs().max())


def odd_widths(groups: list) -> dict[str, int]:  # type: ignore[type-arg]
    """An odd new width per group, respecting constraints (LayerNorm: an integer multiple)."""
    out = {}
    for g in groups:
        if g.grows_with:  # linked groups keep one factor
            out[g.name] = 3 * g.width
            continue
        if g.integer_factor:
            out[g.name] = 3 * g.width if (3 * g.width) % 2 else 2 * g.width
            continue
        new = g.width + 3
        m = g.multiple_of
        new = -(-new // m) * m
        while m % 2 == 1 and new % 2 == 0:
            new += m
        out[g.name] = new
    return out
