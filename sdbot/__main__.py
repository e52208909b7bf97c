import sys

from sdbot.cli import main

sys.exit(main())
