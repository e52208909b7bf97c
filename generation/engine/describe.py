"""/describe's captioner: Florence-2 writes captions of a picture, `generation.describe_text` turns
them into prompts.

Blocking code, run by the engine on its worker thread like any other job. The model loads on the
first caption job (most servers rarely describe), then stays resident.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from transformers import AutoProcessor, Florence2ForConditionalGeneration

from generation.describe_text import distinct, to_prompt
from generation.errors import Cancelled
from generation.requests import DESCRIBE_SUGGESTIONS as SUGGESTIONS

log = logging.getLogger(__name__)

# Florence-2's caption tasks, most useful first: the beam-searched suggestions of a first /describe.
CAPTION_TASKS = ("<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<CAPTION>")
_MAX_NEW_TOKENS = 96
_BEAMS = 3
# Sampling for the other suggestions (and all four of a 🔄): varied but still about the picture.
_TOP_P, _TEMPERATURE = 0.9, 0.8
# When captions rewrite to the same prompt, at most this many extra samples look for new ones.
_EXTRA_TRIES = 6


class Captioner:
    def __init__(self, model_id: str, device: torch.device, dtype: torch.dtype) -> None:
        self.model_id = model_id
        self._device, self._dtype = device, dtype
        self._model: Any = None
        self._processor: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        log.info("loading the /describe model %s on %s", self.model_id, self._device)
        self._processor = AutoProcessor.from_pretrained(self.model_id)
        model = Florence2ForConditionalGeneration.from_pretrained(self.model_id, dtype=self._dtype)
        self._model = model.to(self._device).eval()

    def suggestions(
        self,
        image: Image.Image,
        *,
        seed: int,
        sampled: int,
        count_tokens: Callable[[str], int],
        on_caption: Callable[[int, int], None],
        should_stop: Callable[[], bool],
    ) -> list[str]:
        """SUGGESTIONS distinct prompts for `image`: `SUGGESTIONS - sampled` from the beam-searched
        caption tasks, the rest sampled from `seed` (the same seed gives the same prompts).
        `on_caption(done, total)` follows progress; `should_stop` is checked between captions."""
        self._load()
        picture = image.convert("RGB")
        beamed = CAPTION_TASKS[: max(0, SUGGESTIONS - sampled)]
        plan = [(task, False) for task in beamed]
        plan += [(CAPTION_TASKS[i % len(CAPTION_TASKS)], True) for i in range(SUGGESTIONS - len(beamed))]
        total = len(plan)
        prompts: list[str] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for done, (task, sample) in enumerate(plan, start=1):
                prompts = distinct([*prompts, to_prompt(self._caption(picture, task, sample), count_tokens)])
                self._check(should_stop)
                on_caption(done, total)
            for extra in range(_EXTRA_TRIES):
                if len(prompts) >= SUGGESTIONS:
                    break
                task = CAPTION_TASKS[extra % len(CAPTION_TASKS)]
                prompts = distinct([*prompts, to_prompt(self._caption(picture, task, True), count_tokens)])
                self._check(should_stop)
        return prompts[:SUGGESTIONS]

    @staticmethod
    def _check(should_stop: Callable[[], bool]) -> None:
        if should_stop():
            raise Cancelled("stopped between captions")

    def _caption(self, picture: Image.Image, task: str, sample: bool) -> str:
        inputs = self._processor(text=task, images=picture, return_tensors="pt").to(self._device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        decoding: dict[str, Any] = (
            {"do_sample": True, "top_p": _TOP_P, "temperature": _TEMPERATURE, "num_beams": 1}
            if sample
            else {"do_sample": False, "num_beams": _BEAMS}
        )
        with torch.inference_mode():
            generated = self._model.generate(**inputs, max_new_tokens=_MAX_NEW_TOKENS, **decoding)
        return str(self._processor.batch_decode(generated, skip_special_tokens=True)[0])
