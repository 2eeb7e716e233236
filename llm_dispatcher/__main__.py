import sys

from llm_dispatcher.cli import main

sys.exit(main())
