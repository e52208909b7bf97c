"""Image-level NSFW check with diffusers' `StableDiffusionSafetyChecker` weights.

The class's own `forward` only returns booleans (and blacks images out in place), so the scores are
computed here with the same math on the module's own weights: the CLIP image embedding's cosine
similarity to 17 concept embeddings and 3 "special care" embeddings, minus each one's threshold. A
special-care hit lowers every concept threshold by 0.01; an image is flagged when a concept score,
rounded to 3 decimals as the original does, is above 0. Its `nsfw_score` is the highest concept
score (unrounded): negative means below every threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import (
    StableDiffusionSafetyChecker,
    cosine_distance,
)
from PIL import Image
from transformers import CLIPImageProcessor

_SPECIAL_CARE_ADJUSTMENT = 0.01


@dataclass(frozen=True)
class SafetyVerdict:
    flagged: bool
    score: float


class SafetyChecker:
    """Scores a batch of images in one forward pass on the generation device."""

    def __init__(
        self, model: StableDiffusionSafetyChecker, processor: CLIPImageProcessor, device: torch.device
    ) -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device

    @torch.inference_mode()
    def check(self, images: Sequence[Image.Image]) -> list[SafetyVerdict]:
        if not images:
            return []
        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values
        pixels = pixels.to(self.device, self.model.dtype)
        pooled = self.model.vision_model(pixels).pooler_output
        # Distances in fp32, as the original does, whatever dtype the tower runs in.
        embeds = self.model.visual_projection(pooled).float()
        model = self.model
        special = cosine_distance(embeds, model.special_care_embeds.float())
        special -= model.special_care_embeds_weights.float()
        adjustment = (special.round(decimals=3) > 0).any(dim=1, keepdim=True) * _SPECIAL_CARE_ADJUSTMENT
        concept = cosine_distance(embeds, model.concept_embeds.float()) - model.concept_embeds_weights.float()
        scores = (concept + adjustment).max(dim=1).values.cpu().tolist()
        return [SafetyVerdict(flagged=round(score, 3) > 0, score=score) for score in scores]
