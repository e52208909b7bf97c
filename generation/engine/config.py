"""`EngineConfig`: the few settings the engine reads (which models, which device), so engine code
never sees the whole `Settings`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from generation.catalogue import Catalogue, catalogue_for, single_model
from sdbot.settings import Settings


class EngineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model_id: str
    model_revision: str | None = None
    safety_model_id: str
    safety_checker: bool = True
    upscaler_model_id: str
    describe_model_id: str = "none"
    # A dedicated inpainting checkpoint for edits; None: inpaint with the main model's modules.
    inpaint_model_id: str | None = None
    device: str = "auto"
    # The token cap of prompt encoding (checked again here for callers that could not count).
    max_prompt_tokens: int = 450
    compile: Literal["auto", "on", "off"] = "auto"
    fast_path: Literal["auto", "on", "off"] = "auto"
    previews: bool = True
    preview_decoder_id: str = "auto"
    preview_interval_s: float = 1.5
    # Not a setting: tests trace with "eager" (dynamo's guards, no C++ build) to check recompiles.
    compile_backend: str = "inductor"
    # The models file's catalogue (None: only model_id); model_id is then its default model.
    catalogue: Catalogue | None = None
    gpu_memory_gb: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        """Raises CatalogueError for a models file that cannot be used."""
        values = settings.model_dump(include=set(cls.model_fields))
        catalogue = catalogue_for(settings)
        if catalogue.named:
            default = catalogue.entry(None)
            values |= {"catalogue": catalogue, "model_id": default.model_id, "model_revision": default.revision}
        return cls(**values)

    @property
    def models(self) -> Catalogue:
        """The catalogue the engine serves: the models file's, or model_id alone."""
        return self.catalogue or single_model(self.model_id, self.model_revision)

    @property
    def plain_upscale(self) -> bool:
        """`SDBOT_UPSCALER_MODEL_ID=none`: a Lanczos resize instead of the latent upscaler."""
        return self.upscaler_model_id.strip().lower() == "none"

    @property
    def describe_enabled(self) -> bool:
        """`SDBOT_DESCRIBE_MODEL_ID=none` turns /describe off."""
        return self.describe_model_id.strip().lower() != "none"
