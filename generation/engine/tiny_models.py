"""Random-weight models in the real on-disk formats, for tests, offline smoke runs and benchmarks.

`make_tiny_models(dir)` (behind `sdbot make-test-model`) writes folders that the production loading
code reads exactly like hub downloads: a Stable Diffusion pipeline (SD-Turbo's layout: UNet, VAE,
CLIP text encoder and tokenizer, EulerDiscreteScheduler with trailing timesteps), a
`StableDiffusionSafetyChecker` with its `CLIPImageProcessor`, a x2 latent upscaler pipeline, an
inpainting pipeline (9-channel UNet), a TAESD (`AutoencoderTiny`) for live previews, a Florence-2
captioner for /describe (its captions are gibberish), and for the model catalogue a tiny SDXL
pipeline (two text encoders, micro-conditioning), a tiny FLUX pipeline (transformer on packed
16-channel latents, CLIP and T5 encoders, flow-matching scheduler) with its 16-channel TAESD (as
madebyollin/taef1), a tiny SD3 pipeline (SD3.5's MMDiT on 16-channel latents, two CLIP encoders
and T5, flow matching) with its TAESD (as madebyollin/taesd3), a LoRA for each of the SD
pipeline's UNet and the FLUX and SD3 transformers in diffusers' format, and a `models.toml` naming
them. The "tiny" shape runs a 64x64 image in a fraction of a second on a CPU; the "sd-turbo" shape
has SD 2.1-base / SD-Turbo layer sizes (same compute as the real model, random weights) for GPU
benchmarks.

The tokenizer is built in code: every byte is a token and there are no merges, so prompts cost about
one token per character (a real CLIP tokenizer needs roughly one per word). The T5 tokenizer of
FLUX and SD3 is a character-level Unigram model built the same way.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionLatentUpscalePipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion.safety_checker import (
    StableDiffusionSafetyChecker,
)
from diffusers.utils import convert_state_dict_to_diffusers
from transformers import (
    BartConfig,
    BartTokenizer,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    Florence2VisionConfig,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from generation.engine.config import EngineConfig
from sdbot.settings import Settings

ModelShape = Literal["tiny", "sd-turbo"]

# SD-Turbo's scheduler config: few-step sampling needs trailing timestep spacing.
_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
}

# Per shape: UNet, VAE and text-encoder keyword arguments, and the safety checker's vision tower.
# Tiny: VAE scale factor 2 and UNet sample_size 32 make the native size 64 px.
_SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "unet": {
            "block_out_channels": (16, 32),
            "layers_per_block": 1,
            "sample_size": 32,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 32,
            "attention_head_dim": 4,
            "norm_num_groups": 8,
        },
        "vae": {
            "block_out_channels": (8, 16),
            "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2,
            "layers_per_block": 1,
            "norm_num_groups": 4,
            "sample_size": 64,
        },
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2},
        # TAESD with one upsampling, to match the VAE's scale factor of 2.
        "taesd": {
            "encoder_block_out_channels": (8, 8),
            "decoder_block_out_channels": (8, 8),
            "num_encoder_blocks": (1, 1),
            "num_decoder_blocks": (1, 1),
        },
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
            "projection_dim": 32,
        },
    },
    "sd-turbo": {
        "unet": {
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "sample_size": 64,
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "cross_attention_dim": 1024,
            "attention_head_dim": (5, 10, 20, 20),
            "use_linear_projection": True,
        },
        "vae": {
            "block_out_channels": (128, 256, 512, 512),
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "layers_per_block": 2,
            "sample_size": 768,
        },
        "text": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 23,
            "hidden_act": "gelu",
            "projection_dim": 512,
        },
        "taesd": {},  # AutoencoderTiny's defaults are madebyollin/taesd's layout
        "vision": {  # CLIP ViT-L/14, as in CompVis/stable-diffusion-safety-checker
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "image_size": 224,
            "patch_size": 14,
            "projection_dim": 768,
        },
    },
}


@dataclass(frozen=True)
class TinyModelPaths:
    """Folders written by `make_tiny_models`; `settings()` points an engine at them."""

    pipeline: Path
    safety_checker: Path
    upscaler: Path
    preview_decoder: Path
    describer: Path
    # A dedicated inpainting checkpoint (9-channel UNet) for SDBOT_INPAINT_MODEL_ID; optional so the
    # three folders of an older tree still name a complete set.
    inpaint: Path | None = None

    # Beside them, for the model catalogue:
    @property
    def sdxl(self) -> Path:
        """A tiny SDXL pipeline."""
        return self.pipeline.parent / "pipeline-sdxl"

    @property
    def flux(self) -> Path:
        """A tiny FLUX pipeline."""
        return self.pipeline.parent / "pipeline-flux"

    @property
    def flux_preview_decoder(self) -> Path:
        """A TAESD for `flux`'s 16 latent channels (what madebyollin/taef1 is for FLUX)."""
        return self.pipeline.parent / "preview-decoder-flux"

    @property
    def sd3(self) -> Path:
        """A tiny SD3 pipeline."""
        return self.pipeline.parent / "pipeline-sd3"

    @property
    def sd3_preview_decoder(self) -> Path:
        """A TAESD for `sd3`'s 16 latent channels (what madebyollin/taesd3 is for SD3)."""
        return self.pipeline.parent / "preview-decoder-sd3"

    @property
    def lora(self) -> Path:
        """A LoRA (.safetensors) for `pipeline`."""
        return self.pipeline.parent / "lora" / "tiny-ink.safetensors"

    @property
    def flux_lora(self) -> Path:
        """A LoRA (.safetensors) for `flux`."""
        return self.pipeline.parent / "lora" / "tiny-flux-ink.safetensors"

    @property
    def sd3_lora(self) -> Path:
        """A LoRA (.safetensors) for `sd3`."""
        return self.pipeline.parent / "lora" / "tiny-sd3-ink.safetensors"

    @property
    def models_file(self) -> Path:
        """A catalogue naming them: tiny (sd, the default), tiny-xl (sdxl), tiny-flux (flux), tiny-sd3
        (sd3) and the LoRAs tiny-ink (sd), tiny-flux-ink (flux) and tiny-sd3-ink (sd3)."""
        return self.pipeline.parent / "models.toml"

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_id": str(self.pipeline),
            "safety_model_id": str(self.safety_checker),
            "upscaler_model_id": str(self.upscaler),
            "preview_decoder_id": str(self.preview_decoder),
            "describe_model_id": str(self.describer),
            "device": "cpu",
        }
        return Settings(**(values | overrides))

    def engine_config(self, **overrides: Any) -> EngineConfig:
        return EngineConfig.from_settings(self.settings(**overrides))


def make_tiny_models(
    directory: Path, *, shape: ModelShape = "tiny", flag_everything: bool = False
) -> TinyModelPaths:
    """Write every tiny model of the module docstring under `directory`."""
    directory = Path(directory)
    paths = TinyModelPaths(
        pipeline=directory / "pipeline",
        safety_checker=directory / "safety-checker",
        upscaler=directory / "upscaler",
        preview_decoder=directory / "preview-decoder",
        describer=directory / "describer",
        inpaint=directory / "inpaint",
    )
    torch.manual_seed(0)
    text2img = _text2img_pipeline(shape)
    text2img.save_pretrained(paths.pipeline)
    make_safety_checker(paths.safety_checker, shape=shape, flag_everything=flag_everything)
    # The upscaler, SDXL pipeline and LoRA are not benchmarked, so every shape gets the tiny ones.
    _latent_upscaler().save_pretrained(paths.upscaler)
    AutoencoderTiny(latent_channels=4, **_SHAPES[shape]["taesd"]).save_pretrained(paths.preview_decoder)
    make_describer(paths.describer)
    _inpaint_pipeline().save_pretrained(paths.inpaint)
    _sdxl_pipeline().save_pretrained(paths.sdxl)
    flux = make_flux(paths.flux)
    AutoencoderTiny(latent_channels=16, **_SHAPES["tiny"]["taesd"]).save_pretrained(paths.flux_preview_decoder)
    sd3 = make_sd3(paths.sd3)
    # taesd3's layout: its own scale and shift, as SD3's VAE, for decoding the transformer's latents.
    AutoencoderTiny(latent_channels=16, scaling_factor=_SD3_VAE["scaling_factor"], shift_factor=_SD3_VAE["shift_factor"],
                    **_SHAPES["tiny"]["taesd"]).save_pretrained(paths.sd3_preview_decoder)
    make_lora(text2img.unet, paths.lora)
    make_lora(flux.transformer, paths.flux_lora)
    make_lora(sd3.transformer, paths.sd3_lora)
    paths.models_file.write_text(_MODELS_TOML.format(
        # JSON strings are TOML basic strings (backslashes of Windows paths escaped).
        # Absolute: the models file reads relative paths from its own folder.
        sd=json.dumps(str(paths.pipeline.resolve())), sdxl=json.dumps(str(paths.sdxl.resolve())),
        flux=json.dumps(str(paths.flux.resolve())), sd3=json.dumps(str(paths.sd3.resolve())),
        flux_preview_decoder=json.dumps(str(paths.flux_preview_decoder.resolve())),
        sd3_preview_decoder=json.dumps(str(paths.sd3_preview_decoder.resolve())),
        lora=json.dumps(str(paths.lora.resolve())), flux_lora=json.dumps(str(paths.flux_lora.resolve())),
        sd3_lora=json.dumps(str(paths.sd3_lora.resolve())),
    ), "utf-8")
    return paths


def make_describer(directory: Path) -> Path:
    """Write a Florence-2 model and processor folder, laid out like florence-community/Florence-2-base
    (DaViT vision tower, BART encoder-decoder, byte-level BART tokenizer, CLIP-style image
    processor), scaled down: a 64x64 input gives 8x8 visual tokens plus one temporal token."""
    torch.manual_seed(0)
    symbols = list(bytes_to_unicode().values())
    vocab = {token: index for index, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", *symbols, "<mask>"])}
    vocab["<image>"] = len(vocab)
    tokenizer = BartTokenizer(
        vocab=vocab, merges=[], model_max_length=1024, extra_special_tokens={"image_token": "<image>"}
    )
    side = 64
    image_processor = CLIPImageProcessor(
        size={"height": side, "width": side}, do_center_crop=False,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    image_processor.image_seq_length = (side // 8) ** 2 + 1  # total patch stride 4 x 2
    text = BartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=1024, bos_token_id=0, pad_token_id=1, eos_token_id=2,
        decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2,
    )
    vision = Florence2VisionConfig(
        depths=(1, 1), patch_size=(7, 3), patch_stride=(4, 2), patch_padding=(3, 1),
        patch_prenorm=(False, True), embed_dim=(16, 32), num_heads=(2, 4), num_groups=(2, 4),
        window_size=4, projection_dim=32, drop_path_rate=0.0,
    )
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)
    Florence2ForConditionalGeneration(config).eval().save_pretrained(directory)
    Florence2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return Path(directory)


_MODELS_TOML = """\
# The tiny random-weight models of `sdbot make-test-model` as a catalogue (SDBOT_MODELS_FILE).
default = "tiny"

[models.tiny]
model_id = {sd}
description = "tiny SD test model"
steps = 2
size = 64

[models.tiny-xl]
model_id = {sdxl}
description = "tiny SDXL test model"
steps = 2
size = 64

[models.tiny-flux]
model_id = {flux}
description = "tiny FLUX test model"
steps = 2
guidance = 0.0
size = 64
preview_decoder = {flux_preview_decoder}

[models.tiny-sd3]
model_id = {sd3}
description = "tiny SD3 test model"
steps = 2
guidance = 4.0
size = 64
preview_decoder = {sd3_preview_decoder}

[loras.tiny-ink]
source = {lora}
family = "sd"
weight = 1.0
description = "tiny test LoRA"

[loras.tiny-flux-ink]
source = {flux_lora}
family = "flux"
weight = 1.0
description = "tiny FLUX test LoRA"

[loras.tiny-sd3-ink]
source = {sd3_lora}
family = "sd3"
weight = 1.0
description = "tiny SD3 test LoRA"
"""


def make_lora(model: UNet2DConditionModel | FluxTransformer2DModel | SD3Transformer2DModel, path: Path,
              rank: int = 4) -> Path:
    """Write a LoRA for the attention projections of a UNet (SD), a FLUX or an SD3 transformer, in
    the format diffusers' own training scripts save, with random weights in both factors (peft's
    default leaves one at zero, which would change nothing). `model` is unchanged."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = copy.deepcopy(model)
    torch.manual_seed(1)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    model.add_adapter(config)
    layers = get_peft_model_state_dict(model)
    if isinstance(model, UNet2DConditionModel):
        StableDiffusionPipeline.save_lora_weights(
            path.parent, unet_lora_layers=convert_state_dict_to_diffusers(layers), weight_name=path.name
        )
    else:
        pipeline = FluxPipeline if isinstance(model, FluxTransformer2DModel) else StableDiffusion3Pipeline
        pipeline.save_lora_weights(path.parent, transformer_lora_layers=layers, weight_name=path.name)
    return path


def make_safety_checker(directory: Path, *, shape: ModelShape = "tiny", flag_everything: bool = False) -> Path:
    """Write a `StableDiffusionSafetyChecker` folder. Concept thresholds of 1.0 can never be
    exceeded by a cosine similarity, so the normal checker flags nothing; thresholds of -2.0 are
    always exceeded, so `flag_everything` flags every image."""
    torch.manual_seed(0)
    vision = _SHAPES[shape]["vision"]
    config = CLIPConfig(
        text_config=_text_config(shape).to_dict(), vision_config=vision, projection_dim=vision["projection_dim"]
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    threshold = -2.0 if flag_everything else 1.0
    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    checker.save_pretrained(directory)
    side = vision["image_size"]
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(
        directory
    )
    return Path(directory)


def byte_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    # One token per byte (and per byte at a word end), plus CLIP's start and end tokens.
    symbols = list(bytes_to_unicode().values())
    vocab = {symbol: index for index, symbol in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, pad_token=pad_token)


def _text_config(shape: ModelShape) -> CLIPTextConfig:
    vocab_size = 2 * 256 + 2  # matches byte_tokenizer()
    return CLIPTextConfig(
        vocab_size=vocab_size if shape == "tiny" else 49408,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        max_position_embeddings=77,
        **_SHAPES[shape]["text"],
    )


def _text2img_pipeline(shape: ModelShape) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        unet=UNet2DConditionModel(in_channels=4, out_channels=4, **_SHAPES[shape]["unet"]),
        vae=AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **_SHAPES[shape]["vae"]),
        text_encoder=CLIPTextModel(_text_config(shape)),
        tokenizer=byte_tokenizer(),
        scheduler=EulerDiscreteScheduler(**_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _inpaint_pipeline() -> StableDiffusionInpaintPipeline:
    # Laid out like stabilityai/stable-diffusion-2-inpainting: the UNet reads the noisy latents (4),
    # the mask (1) and the masked picture's latents (4).
    text2img = _text2img_pipeline("tiny")
    unet = UNet2DConditionModel(in_channels=9, out_channels=4, **_SHAPES["tiny"]["unet"])
    return StableDiffusionInpaintPipeline(**{**text2img.components, "unet": unet}, requires_safety_checker=False)


def _sdxl_pipeline() -> StableDiffusionXLPipeline:
    # SDXL's layout scaled down (as in diffusers' own tests): two CLIP encoders whose hidden states
    # are concatenated (32 + 32), the second's pooled projection (32) plus six 8-wide time ids as
    # the added conditioning (6 * 8 + 32 = 80). Native size 64 px, like the SD test model.
    text = _text_config("tiny")
    text.projection_dim = 32
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=8,
    )
    return StableDiffusionXLPipeline(
        vae=AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **_SHAPES["tiny"]["vae"]),
        text_encoder=CLIPTextModel(text),
        text_encoder_2=CLIPTextModelWithProjection(text),
        tokenizer=byte_tokenizer(),
        tokenizer_2=byte_tokenizer(pad_token="!"),  # as SDXL's second tokenizer pads
        unet=unet,
        scheduler=EulerDiscreteScheduler(**_SCHEDULER),
    )


def t5_tokenizer() -> T5TokenizerFast:
    # T5's layout (pad 0, end of text 1, unknown 2) with one piece per printable ASCII character,
    # alone or starting a word ("▁" marks a word start, as in SentencePiece).
    characters = [chr(code) for code in range(33, 127)]
    pieces = ["▁", *characters, *("▁" + character for character in characters)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *((piece, -1.0) for piece in pieces)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def make_flux(directory: Path, *, guided: bool = False) -> FluxPipeline:
    """Write a tiny FLUX pipeline, FLUX.1-schnell's layout, or with `guided` FLUX.1-dev's (a
    distilled-guidance input to the transformer); returns it."""
    torch.manual_seed(0)
    pipe = _flux_pipeline(guided)
    pipe.save_pretrained(directory)
    return pipe


def _flux_pipeline(guided: bool) -> FluxPipeline:
    # FLUX.1's layout scaled down (as in diffusers' own tests): a transformer reading 2x2 patches of
    # 16-channel latents (16 * 4 = 64 inputs), CLIP's pooled output (32) and T5's hidden states (32);
    # a VAE with FLUX's 16 channels, scale and shift, scale factor 2 like the SD test model.
    text = _text_config("tiny")
    text.projection_dim = 32
    tokenizer_2 = t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
        guidance_embeds=guided,
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),  # as FLUX.1-schnell
        vae=_latent16_vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=CLIPTextModel(text),
        tokenizer=byte_tokenizer(),
        text_encoder_2=_t5_encoder(tokenizer_2, width=32),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


# SD3's VAE scale and shift (SD3 and 3.5 share the VAE; taesd3 decodes its latents).
_SD3_VAE = {"scaling_factor": 1.5305, "shift_factor": 0.0609}


def make_sd3(directory: Path) -> StableDiffusion3Pipeline:
    """Write a tiny SD3 pipeline (SD3.5 medium's layout); returns it."""
    torch.manual_seed(0)
    pipe = _sd3_pipeline()
    pipe.save_pretrained(directory)
    return pipe


def _sd3_pipeline() -> StableDiffusion3Pipeline:
    # SD3's layout scaled down (as in diffusers' own tests, with SD3's 16 channels and 2x2 patches):
    # the prompt goes through two CLIP encoders, whose penultimate hidden states are concatenated
    # (32 + 32) and padded to T5's width (64) beside T5's, and whose pooled projections are
    # concatenated (32 + 32); an MMDiT with SD3.5's RMS-normed attention and a dual-attention
    # block (MMDiT-X); a 16-channel VAE of scale factor 2, so 64 px is 32x32 latents, 16x16 patches.
    text = _text_config("tiny")
    text.projection_dim = 32
    tokenizer_3 = t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=128, dual_attention_layers=(0,), qk_norm="rms_norm",  # up to 512 px
    )
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # as SD3
        vae=_latent16_vae(**_SD3_VAE),
        text_encoder=CLIPTextModelWithProjection(text),
        tokenizer=byte_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(text),
        tokenizer_2=byte_tokenizer(pad_token="!"),  # as SD3's CLIP-G tokenizer pads
        text_encoder_3=_t5_encoder(tokenizer_3, width=64),
        tokenizer_3=tokenizer_3,
        transformer=transformer,
    )


def _latent16_vae(*, scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    """The 16-channel VAE of the transformer families (no quant convolutions), tiny scale factor 2."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=scaling_factor, shift_factor=shift_factor, **_SHAPES["tiny"]["vae"],
    )


def _t5_encoder(tokenizer: T5TokenizerFast, *, width: int) -> T5EncoderModel:
    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=width, d_ff=2 * width, d_kv=8, num_heads=4, num_layers=2,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))


def _latent_upscaler() -> StableDiffusionLatentUpscalePipeline:
    # Laid out like stabilityai/sd-x2-latent-upscaler (K-diffusion blocks, Fourier time embedding,
    # low-res latents concatenated to the input, a variance channel in the output), scaled down.
    # time_cond_proj_dim = 128 noise-level features + the text encoder's pooled output (32).
    text = _text_config("tiny")
    unet = UNet2DConditionModel(
        act_fn="gelu",
        attention_head_dim=8,
        norm_num_groups=None,
        block_out_channels=(32, 32, 64, 64),
        time_cond_proj_dim=128 + text.hidden_size,
        conv_in_kernel=1,
        conv_out_kernel=1,
        cross_attention_dim=text.hidden_size,
        down_block_types=("KDownBlock2D",) + ("KCrossAttnDownBlock2D",) * 3,
        up_block_types=("KCrossAttnUpBlock2D",) * 3 + ("KUpBlock2D",),
        in_channels=8,
        out_channels=5,
        mid_block_type=None,
        only_cross_attention=False,
        resnet_time_scale_shift="scale_shift",
        time_embedding_type="fourier",
        timestep_post_act="gelu",
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
    )
    return StableDiffusionLatentUpscalePipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text),
        tokenizer=byte_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(prediction_type="sample"),
    )
