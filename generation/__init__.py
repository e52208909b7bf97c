"""Image generation: pipelines, the fair-share queue, the worker and safety. No Discord here."""

import logging

# transformers warns once per image-processor class that torchvision is missing and it falls back to
# the PIL implementation; that fallback is what we want, so keep the notice out of the bot's log.
# Set here, on the package, so it holds whichever generation module is imported first.
logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
