"""What a job costs the GPU: relative work units, corrected by measured seconds."""

from __future__ import annotations

import pytest

from generation.jobs.cost import DEFAULT_SECONDS_PER_UNIT, SecondsPerUnit, work_units
from generation.requests import EditSource, RequestLimits, pan, zoom_out
from sdbot.types import PipelineKind
from tests.fakes.params import text2img


def test_work_grows_with_images_pixels_and_steps() -> None:
    one = work_units(text2img(seeds=(1,), width=512, height=512, steps=4))
    assert one == 4.0
    assert work_units(text2img(seeds=(1, 2, 3, 4), width=1024, height=1024, steps=4)) == 16 * one
    assert work_units(text2img(steps=8, width=512, height=512)) == 2 * one


def test_img2img_pays_only_for_the_steps_it_runs_and_upscales_weigh_double() -> None:
    variation = text2img(pipeline=PipelineKind.IMG2IMG, strength=0.25, steps=8, width=512, height=512)
    assert work_units(variation) == 2.0
    weak = text2img(pipeline=PipelineKind.IMG2IMG, strength=0.1, steps=4, width=512, height=512)
    assert work_units(weak) == 1.0  # at least one step
    upscale = text2img(pipeline=PipelineKind.UPSCALE, steps=4, width=512, height=512)
    assert work_units(upscale) == 2 * work_units(text2img(steps=4, width=512, height=512))


def test_the_first_measurement_replaces_the_prior_then_averages() -> None:
    rate = SecondsPerUnit(alpha=0.5)
    assert (rate.value, rate.measured) == (DEFAULT_SECONDS_PER_UNIT, False)
    rate.observe(seconds=10.0, units=2.0)
    assert (rate.value, rate.measured) == (5.0, True)
    rate.observe(seconds=1.0, units=1.0)
    assert rate.value == pytest.approx(3.0)
    rate.observe(seconds=1.0, units=0.0)  # nothing measured: ignored
    assert rate.value == pytest.approx(3.0)


def test_a_pan_costs_its_bigger_canvas() -> None:
    limits, base = RequestLimits(), EditSource(width=512, height=512, steps=4)
    assert work_units(pan(limits, base, "right")) == 1.5 * work_units(zoom_out(limits, base, "2x")) == 1.5 * 4 * 4
