"""Errors the engine, queue and worker raise; each message is fit to show a user or an operator."""


class GenerationError(Exception):
    """Base class: the message says what went wrong in plain words."""


class InvalidRequest(GenerationError):
    """The parameters cannot be generated (bad size, steps, seed, prompt...). Nothing was run."""


class BlockedPrompt(InvalidRequest):
    """The prompt contains a word or phrase the operator blocked."""


class ModelLoadError(GenerationError):
    """A model could not be loaded; the message names the setting to fix."""


class OutOfMemory(GenerationError):
    """The device ran out of memory for this batch; a smaller batch may fit."""


class Cancelled(GenerationError):
    """The run was stopped between denoising steps because every job in it was cancelled."""


class QueueRefused(GenerationError):
    """The queue would not take the job (per-user limit or full queue); nothing was queued."""


class WorkerLost(GenerationError):
    """The process running a batch died (a remote worker killed, out of memory or its host lost).
    Its jobs were not at fault: they are queued again."""
